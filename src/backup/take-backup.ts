import { lsnToNumber } from "../postgres/lsn";
import { Client } from "pg";
import { clientConfig, type Credentials } from "../postgres/connection";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import type { FileEntry, NodeDriver, NodeRef } from "../nodes/node-driver";

import { CURRENT_TIMELINE_SQL } from "../postgres/node-state";
import { BundleWriter } from "../storage/bundle-writer";
import { planFile, type ChangeSet, type FilePlan } from "./change-plan";
import { forEachParallel, syncFileSystem } from "../storage/copy-file";
import { copyPlanned, type CopyTarget } from "./copy-strategies";
import { isExcluded, unloggedRelationsOf } from "./exclusions";
import {
  backupId,
  labelStartLsn,
  labelTimeline,
  MANIFEST_VERSION,
  type BackupManifest,
  type BackupType,
  type Compression,
  type ManifestEntry,
} from "./manifest";
import { blockCount } from "./relation-files";
import type { Repository } from "../storage/repository";
import type { WalArchiver } from "../wal/wal-archiver";
import { changesSince, referenceOnHistory } from "../wal/wal-changes";
import { serverHistory, type TimelineStep } from "../postgres/timelines";
import type { WalSummarizer } from "../wal/wal-summary";

export interface CopyProgress {
  readonly phase: "copying" | "waiting-for-wal";
  readonly filesDone: number;
  readonly filesTotal: number;
  readonly bytesDone: number;
  readonly bytesTotal: number;
}

export interface BackupDeps {
  readonly clusterName: string;
  readonly driver: NodeDriver;
  readonly repository: Repository;
  readonly archiver: WalArchiver;
  /** Per-segment summaries of the archive: where a differential or incremental finds its changed blocks. */
  readonly summarizer: WalSummarizer;
  readonly superuser: Credentials;
  readonly logger: Logger;
}

export interface BackupOptions {
  /** As asked for: a differential or incremental without a usable reference is taken as a full (and says why). */
  readonly type: BackupType;
  /**
   * What a differential or incremental builds on: the newest full, or the
   * newest backup of any type (the caller chooses); null when there is none.
   */
  readonly reference: BackupManifest | null;
  readonly source: NodeRef;
  readonly compression: Compression;
  readonly parallelism: number;
  readonly archiveTimeoutMs: number;
  /**
   * Closes the current WAL segment on the primary. A standby's pg_backup_stop
   * cannot switch segments, so for a backup taken from a replica the last
   * segment it needs would only be archived whenever the primary happens to
   * fill it: on an idle primary, never.
   */
  readonly switchWalOnPrimary: () => Promise<void>;
  readonly onStart?: (manifest: BackupManifest) => Promise<void> | void;
  readonly onProgress?: (progress: CopyProgress) => void;
}

/**
 * A consistent physical copy with PostgreSQL's non-exclusive backup API:
 * pg_backup_start and pg_backup_stop on one dedicated connection held for
 * the whole copy (if that session ends, PostgreSQL aborts the backup, and so
 * do we); the files are copied while the cluster runs (torn pages are
 * repaired by WAL replay from the redo point, which is why full_page_writes
 * matters), the backup_label PostgreSQL returns is stored, and the backup
 * counts as complete only once the WAL from its start to its stop LSN is in
 * the archive. A failure leaves a manifest marked failed and no content.
 *
 * A differential or incremental stores only the blocks of each relation
 * file that the WAL between its reference's start and its own start
 * touched (see change-plan for what is copied whole); without that WAL it
 * scans page LSNs; a reference on another history makes it a full.
 */
export async function takeBackup(deps: BackupDeps, options: BackupOptions): Promise<BackupManifest> {
  const { driver, repository, logger } = deps;
  const startedAt = new Date();
  const session = new Client({ ...clientConfig(options.source, deps.superuser, 60000), statement_timeout: 0, query_timeout: undefined });
  let sessionError: Error | null = null;
  session.on("error", (error) => (sessionError = error));
  let id = backupId(options.type, startedAt);
  let manifest: BackupManifest = {
    formatVersion: MANIFEST_VERSION,
    id,
    type: options.type,
    status: "running",
    reference: null,
    changesFrom: null,
    promotedToFull: null,
    cluster: deps.clusterName,
    systemIdentifier: "",
    pgVersion: "",
    source: options.source.name,
    timeline: 0,
    startLsn: "0/0",
    stopLsn: null,
    startedAt: startedAt.toISOString(),
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
  try {
    await session.connect();
    const facts = (
      await session.query<{ system_identifier: string; version: string; in_recovery: boolean; timeline: number }>(
        `SELECT system_identifier::text, current_setting('server_version') AS version, pg_is_in_recovery() AS in_recovery,
                CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint())
                     ELSE ${CURRENT_TIMELINE_SQL} END AS timeline
           FROM pg_control_system()`,
      )
    ).rows[0]!;
    const history = await serverHistory(session, facts.timeline);
    const decided = decideType(options, facts, history);
    id = backupId(decided.type, startedAt);
    const reference = decided.type === "full" ? null : options.reference;
    manifest = {
      ...manifest,
      id,
      type: decided.type,
      reference: reference?.id ?? null,
      promotedToFull: decided.promotedToFull,
      systemIdentifier: facts.system_identifier,
      pgVersion: facts.version,
    };
    const started = (await session.query<{ lsn: string }>("SELECT pg_backup_start($1, true)::text AS lsn", [`relevo ${id}`])).rows[0]!.lsn;
    const checkpointedAtMs = Date.now();
    // A file modified within this second cannot be told apart by its mtime
    // later (1 s resolution on some file systems): flagged, never trusted.
    const backupStartSecond = Math.floor(checkpointedAtMs / 1000) * 1000;
    await repository.writeManifest(manifest);
    await options.onStart?.(manifest);

    // A block-level backup needs the WAL up to its own start, archived and summarised.
    let changes: ChangeSet | null = null;
    if (reference) {
      const timeline = (await session.query<{ timeline: number }>("SELECT timeline_id AS timeline FROM pg_control_checkpoint()")).rows[0]!
        .timeline;
      if (facts.in_recovery) await options.switchWalOnPrimary();
      else await session.query("SELECT pg_switch_wal()");
      await deps.archiver.waitForArchived(timeline, started, started, options.archiveTimeoutMs);
      const walArchivedAtMs = Date.now();
      const found = await changesSince(
        deps.summarizer,
        { timeline: reference.timeline, startLsn: reference.startLsn, stopLsn: reference.stopLsn! },
        { timeline, startLsn: started, history: timeline === facts.timeline ? history : await serverHistory(session, timeline) },
      );
      // Only when the timeline changed between the check above and the start (a promotion in between).
      if (found.kind === "other-history")
        throw new RelevoError(
          ErrorCode.PreconditionFailed,
          `the cluster changed history as the backup started (${found.reason}); take it again`,
        );
      if (found.kind === "unavailable")
        logger.warn({ id, reason: found.reason }, "the WAL since the reference is not readable: scanning page LSNs instead");
      changes = found.kind === "changes" ? found.changes : null;
      manifest = { ...manifest, changesFrom: changes ? "wal" : "page-scan" };
      logger.info(
        {
          id,
          reference: reference.id,
          changesFrom: manifest.changesFrom,
          segments: found.kind === "changes" ? found.segments : 0,
          walArchivedMs: walArchivedAtMs - checkpointedAtMs,
          summariesMs: Date.now() - walArchivedAtMs,
        },
        "changes since the reference found",
      );
    }

    const listed = await driver.listFiles(options.source, ".");
    const unlogged = unloggedRelationsOf(listed);
    const kept = listed.filter((entry) => !isExcluded(entry, unlogged) && entry.type !== "symlink");
    const files = kept.filter((entry) => entry.type === "file");
    const bytesTotal = files.reduce((sum, entry) => sum + entry.size, 0);
    const entries = new Map<string, ManifestEntry>();
    for (const directory of kept.filter((entry) => entry.type === "directory")) {
      entries.set(directory.path, { path: directory.path, type: "directory", size: 0, mtimeMs: directory.mtimeMs });
    }
    const referenceEntries = new Map((reference?.files ?? []).map((entry) => [entry.path, entry] as const));
    const sinceLsn = reference ? lsnToNumber(reference.startLsn) : 0;
    let filesDone = 0;
    let bytesDone = 0;
    const bundles = new BundleWriter(repository.backupDir(id), options.compression);
    const target: CopyTarget = { driver, source: options.source, bundles, repository, backupId: id };
    // Largest first: the big relation files set the pace, the small ones fill in around them.
    const byDescendingSize = [...files].sort((a, b) => b.size - a.size);
    try {
      await forEachParallel(byDescendingSize, options.parallelism, async (file: FileEntry) => {
        if (sessionError) throw sessionError;
        const plan: FilePlan = reference
          ? planFile(file, referenceEntries.get(file.path), changes)
          : { kind: "whole", reason: "full backup" };
        const copied = await copyPlanned(target, file, plan, sinceLsn);
        if (copied === null) return; // dropped while we copied: WAL replay removes it anyway
        entries.set(file.path, {
          path: file.path,
          type: "file",
          size: copied.size,
          mtimeMs: file.mtimeMs,
          ...(file.mtimeMs >= backupStartSecond ? { mtimeUnreliable: true } : {}),
          ...(copied.crc32 ? { crc32: copied.crc32 } : {}),
          ...(copied.stored ? { stored: copied.stored } : {}),
          ...(copied.blocks ? { blocks: copied.blocks } : {}),
        });
        filesDone += 1;
        bytesDone += file.size;
        options.onProgress?.({ phase: "copying", filesDone, filesTotal: files.length, bytesDone, bytesTotal });
      });
    } finally {
      await bundles.close();
    }
    if (sessionError) throw sessionError;

    // On a primary, pg_backup_stop also switches to a new WAL segment, so the
    // last one the backup needs is complete and can be archived.
    const stop = (
      await session.query<{ lsn: string; labelfile: string; spcmapfile: string | null }>(
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)",
      )
    ).rows[0]!;
    const stoppedAt = new Date();
    if (facts.in_recovery) await options.switchWalOnPrimary();
    const startLsn = labelStartLsn(stop.labelfile);
    const timeline = labelTimeline(stop.labelfile);
    if (!startLsn || timeline === null) throw new RelevoError(ErrorCode.Internal, `unexpected backup_label: ${stop.labelfile}`);
    await session.end().catch(() => undefined);
    const copiedAtMs = Date.now();
    logger.info(
      { id, startLsn, stopLsn: stop.lsn, checkpointMs: checkpointedAtMs - startedAt.getTime(), copyMs: copiedAtMs - checkpointedAtMs },
      "backup copied; waiting for its WAL to be archived",
    );
    options.onProgress?.({ phase: "waiting-for-wal", filesDone, filesTotal: files.length, bytesDone, bytesTotal: bytesDone });
    await deps.archiver.waitForArchived(timeline, startLsn, stop.lsn, options.archiveTimeoutMs);
    logger.info({ id, walWaitMs: Date.now() - copiedAtMs }, "backup's WAL archived");

    const syncStartedAtMs = Date.now();
    await syncFileSystem(repository.backupDir(id));
    logger.info({ id, syncMs: Date.now() - syncStartedAtMs }, "backup's content on disk");
    const sorted = [...entries.values()].sort((a, b) => a.path.localeCompare(b.path));
    const stored = sorted.filter((entry) => entry.type === "file" && entry.stored);
    manifest = {
      ...manifest,
      status: "completed",
      timeline,
      startLsn,
      stopLsn: stop.lsn,
      stoppedAt: stoppedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      backupLabel: stop.labelfile,
      tablespaceMap: stop.spcmapfile && stop.spcmapfile.length > 0 ? stop.spcmapfile : null,
      sizeBytes: sorted.reduce((sum, entry) => sum + entry.size, 0),
      storedBytes: stored.reduce((sum, entry) => sum + entry.stored!.bytes, 0),
      fileCount: sorted.filter((entry) => entry.type === "file").length,
      filesStored: stored.filter((entry) => !entry.blocks).length,
      blocksStored: sorted.reduce((sum, entry) => sum + (entry.blocks ? blockCount(entry.blocks) : 0), 0),
      files: sorted,
    };
    await repository.writeManifest(manifest);
    return manifest;
  } catch (error) {
    await session.end().catch(() => undefined);
    const cause = (sessionError as Error | null) ?? (error as Error);
    const reason = cause.message;
    manifest = { ...manifest, status: "failed", finishedAt: new Date().toISOString(), error: reason, files: [] };
    await repository.removeBackupContent(id).catch(() => undefined);
    await repository.writeManifest(manifest).catch(() => undefined);
    // The engine's absence is the operator's to fix, and the same code everywhere; anything else failed the backup's commands.
    const code = cause instanceof RelevoError && cause.code === ErrorCode.DockerUnavailable ? cause.code : ErrorCode.CommandFailed;
    throw new RelevoError(code, `backup ${id} failed: ${reason}`, { cause: error, details: { backupId: id } });
  }
}

/**
 * The type the backup is taken as: a differential or incremental needs a
 * reference of this cluster on this backup's history, else it is a full
 * and says why.
 */
function decideType(
  options: BackupOptions,
  facts: { system_identifier: string },
  history: readonly TimelineStep[],
): { type: BackupType; promotedToFull: string | null } {
  if (options.type === "full") return { type: "full", promotedToFull: null };
  const reference = options.reference;
  if (!reference)
    return { type: "full", promotedToFull: `no completed ${options.type === "differential" ? "full backup" : "backup"} to build on` };
  if (reference.systemIdentifier !== facts.system_identifier)
    return { type: "full", promotedToFull: `the reference ${reference.id} is of another cluster (system identifier)` };
  const onHistory = referenceOnHistory(reference, history);
  if (onHistory !== null) return { type: "full", promotedToFull: onHistory };
  return { type: options.type, promotedToFull: null };
}
