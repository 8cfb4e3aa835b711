import type { NodeRef } from "../nodes/node-driver";
import { CURRENT_TIMELINE_SQL } from "../postgres/node-state";
import type { Repository } from "../storage/repository";
import { serverHistory, type TimelineStep } from "../postgres/timelines";
import { referenceOnHistory } from "../wal/wal-changes";
import type { BackupSession } from "./backup-session";
import { backupId, MANIFEST_VERSION, type BackupManifest, type BackupType, type Compression } from "./manifest";

/** What the source node says of itself as the backup starts. */
export interface SourceFacts {
  readonly systemIdentifier: string;
  readonly pgVersion: string;
  readonly inRecovery: boolean;
  /** The timeline the node is on (a standby's: its last restartpoint's). */
  readonly timeline: number;
  /** The timelines that lead to it, oldest first. */
  readonly history: readonly TimelineStep[];
}

/** Pure: the manifest of a backup about to start, as asked for; `running` until it completes or fails. */
export function newManifest(options: {
  readonly clusterName: string;
  readonly type: BackupType;
  readonly source: NodeRef;
  readonly compression: Compression;
  readonly startedAt: Date;
}): BackupManifest {
  return {
    formatVersion: MANIFEST_VERSION,
    id: backupId(options.type, options.startedAt),
    type: options.type,
    status: "running",
    reference: null,
    changesFrom: null,
    promotedToFull: null,
    cluster: options.clusterName,
    systemIdentifier: "",
    pgVersion: "",
    source: options.source.name,
    timeline: 0,
    startLsn: "0/0",
    stopLsn: null,
    startedAt: options.startedAt.toISOString(),
    stoppedAt: null,
    finishedAt: null,
    backupLabel: null,
    tablespaceMap: null,
    compression: options.compression,
    sizeBytes: 0,
    storedBytes: 0,
    fileCount: 0,
    error: null,
    files: [],
  };
}

export async function inspectSource(session: BackupSession): Promise<SourceFacts> {
  const facts = (
    await session.client.query<{ system_identifier: string; version: string; in_recovery: boolean; timeline: number }>(
      `SELECT system_identifier::text, current_setting('server_version') AS version, pg_is_in_recovery() AS in_recovery,
              CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint())
                   ELSE ${CURRENT_TIMELINE_SQL} END AS timeline
         FROM pg_control_system()`,
    )
  ).rows[0]!;
  const history = await serverHistory(session.client, facts.timeline);
  return {
    systemIdentifier: facts.system_identifier,
    pgVersion: facts.version,
    inRecovery: facts.in_recovery,
    timeline: facts.timeline,
    history,
  };
}

export interface DecidedType {
  readonly type: BackupType;
  /** What the backup builds on; null for a full. */
  readonly reference: BackupManifest | null;
  readonly promotedToFull: string | null;
}

/**
 * Pure: the type the backup is taken as: a differential or incremental
 * needs a reference of this cluster on this backup's history, else it is a
 * full and says why.
 */
export function decideType(
  asked: { readonly type: BackupType; readonly reference: BackupManifest | null },
  source: Pick<SourceFacts, "systemIdentifier" | "history">,
): DecidedType {
  if (asked.type === "full") return { type: "full", reference: null, promotedToFull: null };
  const reference = asked.reference;
  if (!reference)
    return {
      type: "full",
      reference: null,
      promotedToFull: `no completed ${asked.type === "differential" ? "full backup" : "backup"} to build on`,
    };
  if (reference.systemIdentifier !== source.systemIdentifier)
    return { type: "full", reference: null, promotedToFull: `the reference ${reference.id} is of another cluster (system identifier)` };
  const onHistory = referenceOnHistory(reference, source.history);
  if (onHistory !== null) return { type: "full", reference: null, promotedToFull: onHistory };
  return { type: asked.type, reference, promotedToFull: null };
}

/** Pure: the manifest once the type is decided (its id says the type) and the source is known. */
export function typedManifest(
  manifest: BackupManifest,
  options: { readonly decided: DecidedType; readonly source: SourceFacts; readonly startedAt: Date },
): BackupManifest {
  const { decided, source, startedAt } = options;
  return {
    ...manifest,
    id: backupId(decided.type, startedAt),
    type: decided.type,
    reference: decided.reference?.id ?? null,
    promotedToFull: decided.promotedToFull,
    systemIdentifier: source.systemIdentifier,
    pgVersion: source.pgVersion,
  };
}

export interface StartedBackup {
  /** What pg_backup_start returned (the checkpoint's LSN). */
  readonly startLsn: string;
  /** When pg_backup_start's checkpoint was done. */
  readonly checkpointedAtMs: number;
}

/** pg_backup_start on the session, then the running manifest written and announced. */
export async function startBackup(options: {
  readonly session: BackupSession;
  readonly repository: Repository;
  readonly manifest: BackupManifest;
  readonly onStart?: (manifest: BackupManifest) => Promise<void> | void;
}): Promise<StartedBackup> {
  const { session, repository, manifest } = options;
  const startLsn = (await session.client.query<{ lsn: string }>("SELECT pg_backup_start($1, true)::text AS lsn", [`relevo ${manifest.id}`]))
    .rows[0]!.lsn;
  const checkpointedAtMs = Date.now();
  await repository.writeManifest(manifest);
  await options.onStart?.(manifest);
  return { startLsn, checkpointedAtMs };
}
