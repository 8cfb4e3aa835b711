import type { Client } from "pg";
import { NodeClient } from "../postgres/node-client";
import { clientConfig, type Credentials } from "../postgres/connection";
import { bytesBehind } from "../postgres/lsn";
import { CURRENT_TIMELINE_SQL } from "../postgres/node-state";
import { isRecoveryConflict, lastReplayedLsn, pauseReplay, resumeReplay } from "../postgres/replay-pause";
import { segmentName, segmentNumber } from "../postgres/wal-names";
import { ErrorCode, RelevoError } from "../errors";
import type { NodeRef } from "../nodes/node-driver";
import type { RecoveryTarget } from "../restore/recovery-target";
import { sleep } from "../util/sleep";

/** One table's content, summarised the same way on the source and on a restored copy. */
export interface TableChecksum {
  readonly database: string;
  /** Schema-qualified, quoted as PostgreSQL quotes it. */
  readonly table: string;
  readonly rows: number;
  /** Sum over the rows of the first 60 bits of md5(row as text): order-independent, no sort. */
  readonly checksum: string;
}

interface ReferenceCommon {
  /** relevo-<backup id>. */
  readonly name: string;
  readonly lsn: string;
  /** The last WAL segment a restore to the point reads (closed right after, so it is archived soon). */
  readonly walFile: string;
  readonly createdAt: string;
  readonly tables: readonly TableChecksum[];
}

/**
 * What manifests recorded before references were taken on a replica (no
 * `kind`): a named restore point taken on the primary, under SHARE locks,
 * right after the backup; restored to by name.
 */
export interface RestorePointReference extends ReferenceCommon {
  readonly kind?: "restore-point";
}

/**
 * A standby paused at `lsn` (the end of the last record it replayed) and
 * its tables checksummed under snapshots opened while paused: exactly what a
 * restore to `lsn`, exclusive, on `timeline` holds.
 */
export interface ReplayPauseReference extends ReferenceCommon {
  readonly kind: "replay-pause";
  /** The replica paused to take it. */
  readonly node: string;
  readonly timeline: number;
}

/** What the restore test restores to and compares with. */
export type ReferencePoint = RestorePointReference | ReplayPauseReference;

/**
 * Pure: where a restore to the reference stops. A paused standby's snapshot
 * holds every record that ends at or before `lsn` and none after, so
 * recovery stops before the record starting at `lsn` (inclusive would
 * replay it too, perhaps a commit the snapshot did not see).
 */
export function referenceRecovery(point: ReferencePoint): { target: RecoveryTarget; timeline: number | "latest" } {
  if (point.kind === "replay-pause") return { target: { kind: "lsn", lsn: point.lsn, inclusive: false }, timeline: point.timeline };
  return { target: { kind: "name", name: point.name }, timeline: "latest" };
}

/** The tables compared: permanent ordinary tables (and partitions) outside the system schemas. */
const TABLES_SQL = `
  SELECT format('%I.%I', n.nspname, c.relname) AS name
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind = 'r' AND c.relpersistence = 'p'
    AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
  ORDER BY 1`;

/** One table's checksum, the same query on the source and on a restored copy. */
async function tableChecksum(client: Client, database: string, table: string): Promise<TableChecksum> {
  const row = (
    await client.query<{ rows: string; checksum: string }>(
      `SELECT count(*)::bigint AS rows, coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0)::text AS checksum FROM ONLY ${table} t`,
    )
  ).rows[0]!;
  return { database, table, rows: Number(row.rows), checksum: row.checksum };
}

async function connect(node: NodeRef, credentials: Credentials, database: string): Promise<Client> {
  const client = new NodeClient({
    ...clientConfig(node, { ...credentials, database }, 30000),
    statement_timeout: 0,
    query_timeout: undefined,
  });
  client.on("error", () => undefined); // a dropped session fails the query in progress
  await client.connect();
  return client;
}

async function databasesOf(client: Client): Promise<string[]> {
  return (
    await client.query<{ datname: string }>("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1")
  ).rows.map((row) => row.datname);
}

/**
 * How long a capture waits for replay to pause. The startup process
 * normally stops within milliseconds; it may take longer while replay
 * waits out a conflict with a standby query.
 */
const PAUSE_WAIT_MS = 30_000;

/**
 * How long the replica's pause marker lives: past the longest a capture
 * holds replay paused (the wait for the pause, then one short query per
 * database), so that the replay pause watch leaves a capture at work alone,
 * and resumes a replica within about this long after a capture's service died.
 */
export const PAUSE_MARKER_TTL_MS = 2 * PAUSE_WAIT_MS;

/** Marks a replica while a capture holds its replay paused, one capture at a time (see ReplayPauseMarkers). */
export interface PauseMarker {
  /** Resolves with this capture's token once the replica is its own; waits up to `waitMs` for another capture. */
  hold(node: string, options: { ttlMs: number; waitMs: number }): Promise<string>;
  /** Clears the mark if it is still this token's. */
  release(node: string, token: string): Promise<void>;
}

/**
 * Replay moved while the snapshots were being opened: someone resumed it
 * (the replay pause watch, after the marker expired, or an operator). The
 * snapshots may then see past L; the capture is taken again.
 */
class ReplayMovedError extends RelevoError {
  constructor(node: string, from: string, to: string) {
    super(ErrorCode.PreconditionFailed, `${node} replayed on from ${from} to ${to} while it should have been paused`);
  }
}

export interface CaptureOptions {
  /** A streaming replica that a failover does not depend on alone (see chooseReferenceReplica). */
  readonly replica: NodeRef;
  /** Asked only to mark the point in the WAL and close the segment: no lock, no read of a table. */
  readonly primary: NodeRef;
  readonly credentials: Credentials;
  /** relevo-<backup id>: the restore point's name on the primary. */
  readonly name: string;
  /** The backup's stop LSN: the point is at or past it (a restore cannot stop before consistency). */
  readonly notBefore: string;
  /** How long the replica may take to replay up to `notBefore`, and to pause. */
  readonly timeoutMs: number;
  /** Marks the replica while its replay is paused, so that nothing resumes it meanwhile. */
  readonly marker: PauseMarker;
  /** Tries after a conflict with recovery cancelled a checksum (default 3). */
  readonly attempts?: number;
}

/**
 * The reference the restore test compares with, at no cost to the primary:
 * on a replica that has replayed past the backup's stop, replay is paused
 * (until pg_get_wal_replay_pause_state() says paused), L = the last replayed
 * LSN, one REPEATABLE READ transaction is opened per database and its first
 * query run (a standby's snapshot follows the commit records replayed, so it
 * sees exactly what a restore to L sees; transactions in flight are invisible
 * in both), and replay resumes at once; the checksums are then computed
 * under those snapshots. A checksum cancelled by a conflict with recovery is
 * taken again, at a new point. The primary only writes a restore point named
 * after the backup and switches WAL, so the segments up to L are archived.
 */
export async function captureReferencePoint(options: CaptureOptions): Promise<ReplayPauseReference> {
  const attempts = options.attempts ?? 3;
  await waitForReplay(options);
  for (let attempt = 1; ; attempt += 1) {
    try {
      const { lsn, timeline, tables } = await checksumsAtPausedReplay(options);
      const mark = await markOnPrimary(options);
      if (mark.timeline !== timeline) {
        throw new RelevoError(
          ErrorCode.PreconditionFailed,
          `${options.replica.name} receives timeline ${timeline}, the primary writes ${mark.timeline}: no reference point on it`,
        );
      }
      return { kind: "replay-pause", ...mark, lsn, node: options.replica.name, createdAt: new Date().toISOString(), tables };
    } catch (error) {
      if (attempt >= attempts || !(isRecoveryConflict(error) || error instanceof ReplayMovedError)) throw error;
    }
  }
}

async function waitForReplay(options: CaptureOptions): Promise<void> {
  const control = await connect(options.replica, options.credentials, options.credentials.database);
  try {
    const deadline = Date.now() + options.timeoutMs;
    for (;;) {
      const replayed = await lastReplayedLsn(control);
      if (bytesBehind(options.notBefore, replayed) === 0) return;
      if (Date.now() > deadline) {
        throw new RelevoError(
          ErrorCode.Timeout,
          `${options.replica.name} did not replay up to the backup's stop (${options.notBefore}, at ${replayed}) within ${options.timeoutMs} ms`,
        );
      }
      await sleep(100);
    }
  } finally {
    await control.end().catch(() => undefined);
  }
}

/** Paused replay, one snapshot per database, resumed replay; then the checksums under those snapshots. */
async function checksumsAtPausedReplay(
  options: CaptureOptions,
): Promise<{ lsn: string; timeline: number | null; tables: TableChecksum[] }> {
  const { replica, credentials } = options;
  const control = await connect(replica, credentials, credentials.database);
  const readers: Array<{ database: string; client: Client; tables: string[] }> = [];
  try {
    // Connected before the pause, which lasts only as long as the first query of each.
    for (const database of await databasesOf(control))
      readers.push({ database, client: await connect(replica, credentials, database), tables: [] });
    let lsn: string;
    let timeline: number | null;
    // Marked before the pause and cleared after the resume: a pause without the mark is nobody's (see ReplayPauseWatch).
    // Another capture on this replica (another backup's verification) pauses for a moment: this one waits its turn.
    const token = await options.marker.hold(replica.name, { ttlMs: PAUSE_MARKER_TTL_MS, waitMs: PAUSE_WAIT_MS });
    try {
      await pauseReplay(control, Math.min(options.timeoutMs, PAUSE_WAIT_MS));
      lsn = await lastReplayedLsn(control);
      timeline = (await control.query<{ tli: number | null }>("SELECT received_tli AS tli FROM pg_stat_wal_receiver")).rows[0]?.tli ?? null;
      for (const reader of readers) {
        await reader.client.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
        // The first query fixes the snapshot: the tables are those of the point.
        reader.tables = (await reader.client.query<{ name: string }>(TABLES_SQL)).rows.map((row) => row.name);
      }
      // Every snapshot was opened at L only if replay did not move meanwhile.
      const after = await lastReplayedLsn(control);
      if (after !== lsn) throw new ReplayMovedError(replica.name, lsn, after);
    } finally {
      // The mark is cleared even when the resume fails (the connection dropped): left, it would keep the replay
      // pause watch from resuming the replica until it expires. A release failure never hides the resume's error.
      try {
        await resumeReplay(control);
      } finally {
        await options.marker.release(replica.name, token).catch(() => undefined);
      }
    }
    const tables: TableChecksum[] = [];
    for (const reader of readers)
      for (const table of reader.tables) tables.push(await tableChecksum(reader.client, reader.database, table));
    return { lsn, timeline, tables };
  } finally {
    for (const client of [control, ...readers.map((reader) => reader.client)]) await client.end().catch(() => undefined);
  }
}

/**
 * A restore point on the primary (a WAL record after L, so recovery finds
 * the record that ends it) and a segment switch, so that every segment up to
 * it is archived soon, even on an idle primary. Neither locks nor reads a
 * table.
 */
async function markOnPrimary(options: CaptureOptions): Promise<{ name: string; walFile: string; timeline: number }> {
  const client = await connect(options.primary, options.credentials, options.credentials.database);
  try {
    const row = (
      await client.query<{ lsn: string; timeline: number }>(
        `SELECT pg_create_restore_point($1)::text AS lsn, ${CURRENT_TIMELINE_SQL} AS timeline`,
        [options.name],
      )
    ).rows[0]!;
    await client.query("SELECT pg_switch_wal()");
    return { name: options.name, walFile: segmentName(row.timeline, segmentNumber(row.lsn)), timeline: row.timeline };
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** The same checksums on a (restored, quiet) node, for the tables recorded. */
export async function checksumsOn(node: NodeRef, credentials: Credentials, recorded: readonly TableChecksum[]): Promise<TableChecksum[]> {
  const result: TableChecksum[] = [];
  for (const database of [...new Set(recorded.map((entry) => entry.database))]) {
    const client = await connect(node, credentials, database);
    try {
      for (const entry of recorded.filter((candidate) => candidate.database === database)) {
        const exists = (await client.query<{ found: boolean }>("SELECT to_regclass($1) IS NOT NULL AS found", [entry.table])).rows[0]!
          .found;
        if (!exists) continue; // reported as missing
        result.push(await tableChecksum(client, database, entry.table));
      }
    } finally {
      await client.end().catch(() => undefined);
    }
  }
  return result;
}

/** Pure: the recorded tables whose content differs (or is missing) on the copy, described. */
export function checksumMismatches(recorded: readonly TableChecksum[], actual: readonly TableChecksum[]): string[] {
  const found = new Map(actual.map((entry) => [`${entry.database}/${entry.table}`, entry]));
  const mismatches: string[] = [];
  for (const expected of recorded) {
    const got = found.get(`${expected.database}/${expected.table}`);
    if (!got) mismatches.push(`${expected.database}: ${expected.table} missing`);
    else if (got.rows !== expected.rows || got.checksum !== expected.checksum) {
      mismatches.push(`${expected.database}: ${expected.table} differs (${got.rows} rows, expected ${expected.rows})`);
    }
  }
  return mismatches;
}
