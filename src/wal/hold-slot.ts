import type { Client } from "pg";
import { lsnFromNumber, lsnToNumber } from "../postgres/lsn";
import { parseSegmentName, SEGMENT_SIZE, segmentName } from "../postgres/wal-names";
import { timelineOfSegment, type TimelineStep } from "../postgres/timelines";

/**
 * The archive's hold slot: physical, reserved at creation, never connected.
 * pg_receivewal confirms what it wrote to the spool, so the archive slot
 * (`relevo_archive`) lets the primary recycle WAL that then exists only on
 * Relevo's disk; this one moves only past what the repository holds
 * (pushed), so the primary keeps every segment until it is. A new
 * archiver with an empty spool (lost, wiped, another host) starts from a
 * copy of it. PostgreSQL 15's slots do not follow a failover: a new
 * primary gets both made again.
 */
export const HOLD_SLOT = "relevo_archive_hold";

/**
 * Where the hold slot may move from `restartLsn`: the end of the run of
 * segments the repository holds (`pushed`) starting at the segment
 * `restartLsn` lies in, each under the timeline the primary's `history`
 * is on at that segment (timelineOfSegment: the file a restore reads);
 * null when that segment is not held (the slot stays). A segment of the
 * same number on another timeline (an old primary's branch, not set aside
 * yet) is not the primary's WAL and does not count: past it the primary
 * would recycle what the repository never got. Pure.
 */
export function holdAdvanceLsn(restartLsn: string, pushed: ReadonlySet<string>, history: readonly TimelineStep[]): string | null {
  const first = Math.floor(lsnToNumber(restartLsn) / SEGMENT_SIZE);
  let segment = first;
  while (pushed.has(segmentName(timelineOfSegment(history, segment), segment))) segment += 1;
  return segment === first ? null : lsnFromNumber(segment * SEGMENT_SIZE);
}

/**
 * The spool's files the pusher may drop: complete segments the repository
 * holds (`pushed`), summarised (the summariser reads them here), and
 * wholly before `holdRestartLsn` (the primary no longer keeps them for the
 * archive: the copy is the repository's); never the newest complete
 * segment (where pg_receivewal resumes when the spool has no .partial),
 * a `.partial`, a history, or anything else. Pure.
 */
export function spoolDroppable(
  names: readonly string[],
  facts: { readonly pushed: (name: string) => boolean; readonly summarized: (name: string) => boolean; readonly holdRestartLsn: string },
): string[] {
  const segments = names
    .map((name) => ({ name, parsed: parseSegmentName(name) }))
    .filter((entry) => entry.parsed !== null)
    .sort((a, b) => a.parsed!.segment - b.parsed!.segment || a.parsed!.timeline - b.parsed!.timeline);
  const newest = segments.at(-1)?.name;
  const holdSegment = Math.floor(lsnToNumber(facts.holdRestartLsn) / SEGMENT_SIZE);
  return segments
    .filter(
      (entry) => entry.name !== newest && entry.parsed!.segment < holdSegment && facts.pushed(entry.name) && facts.summarized(entry.name),
    )
    .map((entry) => entry.name);
}

/** The low-water mark of a full spool, as a share of RELEVO_WAL_SPOOL_MAX: receiving resumes below it. */
export const SPOOL_RESUME_SHARE = 0.8;

/**
 * Whether the spool is full, from whether it was and the bytes it holds:
 * full at `maxBytes` or more; once full, until it is below the low-water
 * mark (so receiving does not stop and start at every segment). Pure.
 */
export function spoolFull(wasFull: boolean, bytes: number, maxBytes: number): boolean {
  return wasFull ? bytes >= maxBytes * SPOOL_RESUME_SHARE : bytes >= maxBytes;
}

/** The hold slot's state on a primary; null when it has none. */
export async function readHoldSlot(client: Client): Promise<{ readonly restartLsn: string | null; readonly lost: boolean } | null> {
  const slot = await client.query<{ lsn: string | null; wal_status: string | null }>(
    "SELECT restart_lsn::text AS lsn, wal_status FROM pg_replication_slots WHERE slot_name = $1",
    [HOLD_SLOT],
  );
  const row = slot.rows[0];
  return row ? { restartLsn: row.lsn, lost: row.wal_status === "lost" } : null;
}

/**
 * Makes the hold slot unless it exists: a copy of `archiveSlot` when that
 * exists (an archive slot from before the hold slot keeps what the
 * repository may still lack; a fresh reservation would start at the last
 * checkpoint, after it), else reserving WAL at once.
 */
export async function ensureHoldSlot(client: Client, archiveSlot: string): Promise<void> {
  await client.query(
    `SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $2 AND restart_lsn IS NOT NULL)
                 THEN (SELECT slot_name FROM pg_copy_physical_replication_slot($2, $1))
                 ELSE (SELECT slot_name FROM pg_create_physical_replication_slot($1, true)) END
      WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`,
    [HOLD_SLOT, archiveSlot],
  );
}
