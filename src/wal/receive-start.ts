import { lsnToNumber } from "../postgres/lsn";
import { parseSegmentName, SEGMENT_SIZE, segmentName } from "../postgres/wal-names";
import { timelineOfSegment, type TimelineStep } from "../postgres/timelines";

/** Where pg_receivewal starts streaming: the start of `segment`, on `timeline`. */
export interface ReceiveStart {
  readonly timeline: number;
  readonly segment: number;
}

/**
 * Where pg_receivewal resumes in an archive directory holding `names`, as
 * its FindStreamingStart decides: the newest segment (then the higher
 * timeline, then a complete file over a .partial); after it when it is
 * complete, at its start when it is a .partial; on its timeline. Null for
 * an archive without segments. Pure.
 */
export function receiveStart(names: readonly string[]): ReceiveStart | null {
  let newest: { timeline: number; segment: number; partial: boolean } | null = null;
  for (const name of names) {
    const partial = name.endsWith(".partial");
    const parsed = parseSegmentName(partial ? name.slice(0, -".partial".length) : name);
    if (!parsed) continue;
    if (
      newest === null ||
      parsed.segment > newest.segment ||
      (parsed.segment === newest.segment && parsed.timeline > newest.timeline) ||
      (parsed.segment === newest.segment && parsed.timeline === newest.timeline && newest.partial && !partial)
    ) {
      newest = { ...parsed, partial };
    }
  }
  if (newest === null) return null;
  return { timeline: newest.timeline, segment: newest.partial ? newest.segment : newest.segment + 1 };
}

/**
 * The empty `.partial` file that moves pg_receivewal's start onto the next
 * timeline of `history` when the archive ends exactly where its timeline was
 * left (a switch point on a segment boundary: the old primary's last record
 * was a segment switch, as after a backup); null when no such file is needed.
 *
 * Why: asked to start a timeline at its very end, the server answers
 * START_REPLICATION with the next timeline instead of a stream, which
 * pg_receivewal (15) takes for an error; restarted, it asks the same again,
 * for ever. PostgreSQL copies no segment to the new timeline at a boundary,
 * so nothing in the archive names the new timeline's first segment:
 * pg_receivewal starts a .partial it finds empty from its beginning, on its
 * timeline (and fetches that timeline's .history first). Pure.
 */
export function timelineBoundaryPlaceholder(names: readonly string[], history: readonly TimelineStep[]): string | null {
  const start = receiveStart(names);
  if (start === null) return null;
  const startLsn = start.segment * SEGMENT_SIZE;
  let index = history.findIndex((step) => step.timeline === start.timeline);
  if (index < 0) return null;
  const from = index;
  // A timeline left where it began (no WAL of its own) is passed over too.
  while (history[index]!.switchLsn !== null && lsnToNumber(history[index]!.switchLsn!) === startLsn) index += 1;
  return index === from ? null : `${segmentName(history[index]!.timeline, start.segment)}.partial`;
}

/**
 * The empty `.partial` that makes pg_receivewal resume where the
 * repository's archive ends (`archived`: the index's names) when the spool
 * holds no segment of its own (`spool`): lost, wiped, or on another host
 * after a failover. pg_receivewal takes its start from its directory, and
 * from its slot's restart_lsn only when the directory is empty: on a new
 * primary that is where the slot was just made, past WAL the archive may
 * not have although the primary still does. Named on the timeline the
 * primary's `history` is on at that segment (the file a restore reads).
 * Null when the spool has a segment, or the archive none (a new archive
 * starts wherever its slot does). When the primary no longer has that WAL
 * it refuses the start, and the archiver reports the hole (see
 * lostSlotGap). Pure.
 */
export function emptySpoolPlaceholder(
  spool: readonly string[],
  archived: readonly string[],
  history: readonly TimelineStep[],
): string | null {
  if (receiveStart(spool) !== null) return null;
  const start = receiveStart(archived.filter((name) => !name.endsWith(".partial")));
  if (start === null) return null;
  return `${segmentName(timelineOfSegment(history, start.segment), start.segment)}.partial`;
}

/** Where the archive stands when its slot was lost: the missing segments, and the placeholder that resumes it past them. */
export interface LostSlotGap {
  readonly gap: { readonly timeline: number; readonly from: string; readonly to: string };
  /** An empty `<segment>.partial` at the first segment the primary still has: pg_receivewal starts there (see receiveStart). */
  readonly placeholder: string;
}

/**
 * The hole a lost archive slot leaves: from where pg_receivewal would resume
 * in the archive holding `names` (the segment after its last complete one,
 * or the .partial it was receiving, whose complete file will never come) up
 * to the segment before `resumeLsn` — the restart_lsn of the slot made
 * again, the oldest WAL the primary still holds. Each segment is named on
 * the timeline of `history` it lies on. Null when nothing is missing (an
 * empty archive starts wherever the slot does).
 *
 * Why a placeholder: asked to resume where the archive ends, the primary
 * answers "requested WAL segment … has already been removed", at every
 * restart; an empty .partial of the resume segment moves pg_receivewal's
 * start past the hole. Pure.
 */
export function lostSlotGap(names: readonly string[], history: readonly TimelineStep[], resumeLsn: string): LostSlotGap | null {
  const start = receiveStart(names);
  if (start === null) return null;
  const resume = Math.floor(lsnToNumber(resumeLsn) / SEGMENT_SIZE);
  if (start.segment >= resume) return null;
  const timelineAt = (segment: number): number =>
    (history.find((step) => step.switchLsn === null || lsnToNumber(step.switchLsn) > segment * SEGMENT_SIZE) ?? history.at(-1)!).timeline;
  const last = resume - 1;
  return {
    gap: {
      timeline: timelineAt(last),
      from: segmentName(timelineAt(start.segment), start.segment),
      to: segmentName(timelineAt(last), last),
    },
    placeholder: `${segmentName(timelineAt(resume), resume)}.partial`,
  };
}

/**
 * Whether pg_receivewal was refused because the primary no longer has the
 * WAL it asked for (PostgreSQL's walsender: "requested WAL segment … has
 * already been removed"): the archive ends before the oldest WAL the
 * primary still has, a hole no retry fills. The server's text, in English:
 * Relevo's initdb runs with --locale=C.UTF-8, so lc_messages is C. Pure.
 */
export function walRemovedBeforeArchive(stderr: string): boolean {
  return /requested WAL segment [0-9A-F]{24} has already been removed/.test(stderr);
}
