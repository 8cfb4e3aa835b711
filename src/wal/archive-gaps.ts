import type Redis from "ioredis";
import type { BackupManifest } from "../backup/manifest";
import type { EventLog } from "../events/event-log";
import { parseSegmentName, segmentNumber } from "../postgres/wal-names";
import type { ArchiveGap } from "../restore/recovery-window";

/** A gap as kept in Redis: reported once, settled once a completed full backup started past it. */
export interface GapRecord extends ArchiveGap {
  /** Why the archive lacks it, as reported ("" for a gap the archive monitor found between archived segments). */
  readonly cause: string;
  readonly reportedAt: string;
  /** A completed full backup started past it: no longer a health reason, and never reported again. */
  readonly settled: boolean;
}

/**
 * The archive's gaps, kept in Redis (a hash under the cluster's prefix, one
 * field per gap) and so shared by every instance and kept across restarts:
 * each reported once as a critical `archive:gap` event — by whichever
 * instance records it first, whether its archiver found its slot lost (at
 * once, before the segments past the hole are archived) or an archive
 * monitor found a missing segment between archived ones — and named in every
 * instance's cluster health until a full backup has started past it. A
 * settled gap is kept, settled: the monitor still sees it in the recovery
 * window while an older backup is kept, and it is not news again.
 */
export class ArchiveGaps {
  /** The open gaps as last read, for the cluster's health while Redis is away. */
  private lastOpen: GapRecord[] = [];

  constructor(
    private readonly redis: Redis,
    private readonly key: string,
    private readonly events: EventLog,
  ) {}

  /** Emits `archive:gap` unless this gap was recorded already (by any instance, before or since a restart). */
  async report(gap: ArchiveGap, cause: string): Promise<void> {
    const record: GapRecord = { ...gap, cause, reportedAt: new Date().toISOString(), settled: false };
    // HSETNX: of two instances finding one gap, only the one whose field is new reports it.
    if ((await this.redis.hsetnx(this.key, gapField(gap), JSON.stringify(record))) === 0) return;
    await this.events.emit({
      kind: "archive:gap",
      severity: "critical",
      node: null,
      message: `${archiveOf(gap)} misses ${gap.from}${gap.to !== gap.from ? ` to ${gap.to}` : ""} (timeline ${gap.timeline}${cause ? `, ${cause}` : ""}): point-in-time recovery${gap.repository === undefined ? "" : " from it"} cannot cross it; take a full backup`,
      data: { timeline: gap.timeline, from: gap.from, to: gap.to, ...(gap.repository === undefined ? {} : { repository: gap.repository }) },
    });
  }

  /** Settles the gaps a completed full backup started past: the newest state is restorable without crossing them. */
  async settle(manifests: readonly BackupManifest[]): Promise<void> {
    for (const record of settledBy(await this.read(), manifests)) {
      await this.redis.hset(this.key, gapField(record), JSON.stringify({ ...record, settled: true }));
    }
  }

  /** The cluster's health reasons: one per gap not yet behind a full backup (the last known ones while Redis is away). */
  async healthReasons(): Promise<string[]> {
    try {
      this.lastOpen = (await this.read()).filter((record) => !record.settled);
    } catch {
      // Redis away: the last known gaps, rather than none.
    }
    return this.lastOpen.map(
      (gap) =>
        `${archiveOf(gap)} has a gap (${gap.from}${gap.to !== gap.from ? ` to ${gap.to}` : ""}): point-in-time recovery${gap.repository === undefined ? "" : " from it"} cannot cross it; take a full backup`,
    );
  }

  private async read(): Promise<GapRecord[]> {
    const fields = await this.redis.hgetall(this.key);
    return Object.keys(fields)
      .sort()
      .map((field) => JSON.parse(fields[field]!) as GapRecord);
  }
}

/** A gap's identity: its timeline, first and last missing segments, and the repository lacking them when one is named. */
export function gapField(gap: ArchiveGap): string {
  return `${gap.timeline}:${gap.from}:${gap.to}${gap.repository === undefined ? "" : `@${gap.repository}`}`;
}

/** Whose archive a gap is in, for messages. Pure. */
function archiveOf(gap: ArchiveGap): string {
  return gap.repository === undefined ? "the WAL archive" : `the WAL archive of repository ${gap.repository}`;
}

/** The open (unsettled) gaps a completed full backup has started past: settled now. Pure. */
export function settledBy(records: readonly GapRecord[], manifests: readonly BackupManifest[]): GapRecord[] {
  const open = records.filter((record) => !record.settled);
  const stillOpen = openGaps(open, manifests);
  return open.filter((record) => !stillOpen.includes(record));
}

/**
 * The gaps no completed full backup has started past. A restore replays WAL
 * from its backup's start: one that starts after a gap never crosses it, so
 * from then on the gap only costs points in time before that backup. (A
 * differential or incremental is not enough: its changes since its reference
 * are read from the WAL summaries the gap lacks.) Pure.
 */
export function openGaps(gaps: readonly ArchiveGap[], manifests: readonly BackupManifest[]): ArchiveGap[] {
  const fullStarts = manifests.filter((m) => m.status === "completed" && m.type === "full").map((m) => segmentNumber(m.startLsn));
  return gaps.filter((gap) => {
    const last = parseSegmentName(gap.to)?.segment ?? Number.POSITIVE_INFINITY;
    return !fullStarts.some((start) => start > last);
  });
}
