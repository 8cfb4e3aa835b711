import { lsnToNumber, lsnFromNumber } from "../postgres/lsn";
import type { BackupManifest } from "../backup/manifest";
import { SEGMENT_SIZE, segmentName, segmentNumber } from "../postgres/wal-names";

export interface WindowPoint {
  readonly time: string;
  readonly lsn: string;
  readonly timeline: number;
}

export interface ArchiveGap {
  readonly timeline: number;
  /** First and last missing segment. */
  readonly from: string;
  readonly to: string;
  /**
   * The repository (its number) whose archive lacks it, when several are
   * configured and the others may hold it; absent: the cluster's archive
   * as a whole (one repository, or a hole none of them got).
   */
  readonly repository?: number;
}

export interface RecoveryWindow {
  /** The earliest point a restore can reach: the oldest completed backup's end. */
  readonly earliest: WindowPoint | null;
  /**
   * The end of the archived WAL on the newest timeline; its time is the
   * last commit or abort the archived WAL holds (see ArchivedWalState),
   * never when a segment was written: a restore to a later time would not
   * be reached. Never earlier than the end of the newest completed backup
   * the archived WAL reaches (the summaries read may hold no transaction's
   * end: see Repository.archivedWalState).
   */
  readonly latest: WindowPoint | null;
  readonly gaps: readonly ArchiveGap[];
}

export interface ArchivedSegment {
  readonly timeline: number;
  readonly segment: number;
}

/** What the archive holds, as the window is computed from it. */
export interface ArchivedWalState {
  readonly segments: readonly ArchivedSegment[];
  /** The time of the newest COMMIT or ABORT record in the archived WAL (its summaries); null when none is known. */
  readonly reachedAt: string | null;
}

/**
 * The recoverable window from the completed backups and the archive. Pure.
 * A gap is a missing segment on a timeline, after the oldest backup's start,
 * between two segments that are archived: recovery cannot cross it.
 */
export function recoveryWindow(manifests: readonly BackupManifest[], archive: ArchivedWalState): RecoveryWindow {
  const archived = archive.segments;
  const completed = manifests
    .filter((m) => m.status === "completed" && m.stopLsn && m.stoppedAt)
    .sort((a, b) => a.startedAt.localeCompare(b.startedAt));
  const oldest = completed[0];
  const earliest: WindowPoint | null = oldest ? { time: oldest.stoppedAt!, lsn: oldest.stopLsn!, timeline: oldest.timeline } : null;
  const fromSegment = oldest ? segmentNumber(oldest.startLsn) : 0;
  const byTimeline = new Map<number, ArchivedSegment[]>();
  for (const segment of archived) {
    if (segment.segment < fromSegment) continue;
    if (!byTimeline.has(segment.timeline)) byTimeline.set(segment.timeline, []);
    byTimeline.get(segment.timeline)!.push(segment);
  }
  const gaps: ArchiveGap[] = [];
  for (const [timeline, segments] of byTimeline) {
    segments.sort((a, b) => a.segment - b.segment);
    for (let i = 1; i < segments.length; i += 1) {
      const previous = segments[i - 1]!.segment;
      const current = segments[i]!.segment;
      if (current > previous + 1)
        gaps.push({ timeline, from: segmentName(timeline, previous + 1), to: segmentName(timeline, current - 1) });
    }
  }
  const newestTimeline = Math.max(-1, ...byTimeline.keys());
  const newest = byTimeline.get(newestTimeline)?.at(-1);
  const latestLsn = newest ? (newest.segment + 1) * SEGMENT_SIZE : 0;
  // The newest completed backup whose end the archive reaches: its end is reached, whatever the summaries say
  // (none of the newest ones may hold a transaction's end: a bulk load, a summariser behind).
  const reachedBackup = completed
    .filter((m) => lsnToNumber(m.stopLsn!) <= latestLsn)
    .sort((a, b) => a.stoppedAt!.localeCompare(b.stoppedAt!))
    .at(-1);
  const floor = reachedBackup?.stoppedAt ?? earliest?.time ?? "";
  const latest: WindowPoint | null =
    earliest && newest
      ? {
          time: archive.reachedAt !== null && archive.reachedAt > floor ? archive.reachedAt : floor,
          lsn: lsnFromNumber(latestLsn),
          timeline: newestTimeline,
        }
      : null;
  return { earliest, latest, gaps };
}

/** Whether an LSN lies within the window (inclusive). */
export function lsnWithin(window: RecoveryWindow, lsn: string): boolean {
  if (!window.earliest || !window.latest) return false;
  const value = lsnToNumber(lsn);
  return value >= lsnToNumber(window.earliest.lsn) && value <= lsnToNumber(window.latest.lsn);
}
