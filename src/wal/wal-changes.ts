import { lsnToNumber } from "../postgres/lsn";

import { mergeSummaries, type ChangeSet } from "../backup/change-plan";
import type { WalSummarizer } from "./wal-summary";
import type { WalSegmentSummary } from "./waldump-summary";
import { SEGMENT_SIZE, segmentNumber } from "../postgres/wal-names";
import { timelineOfSegment, type TimelineStep } from "../postgres/timelines";

/** A segment's first page header (XLogLongPageHeaderData, 40 bytes on 64-bit builds). */
const LONG_PAGE_HEADER_BYTES = 40;

export interface BackupPoint {
  readonly timeline: number;
  /** Where WAL replay starts (the checkpoint's redo). */
  readonly startLsn: string;
}

export type ChangesSince =
  | { readonly kind: "changes"; readonly changes: ChangeSet; readonly segments: number }
  /** The WAL is missing or could not be read: the caller scans page LSNs instead. */
  | { readonly kind: "unavailable"; readonly reason: string }
  /** The reference is not on this backup's history: it must be a full. */
  | { readonly kind: "other-history"; readonly reason: string };

/** The steps from the reference's timeline to `timeline`, or why the reference is not on that history. */
function stepsFrom(
  steps: readonly TimelineStep[],
  reference: { timeline: number; stopLsn: string },
  timeline: number,
): TimelineStep[] | string {
  const index = steps.findIndex((step) => step.timeline === reference.timeline);
  if (index === -1) return `the reference's timeline ${reference.timeline} is not an ancestor of timeline ${timeline}`;
  const branchedAt = steps[index]!.switchLsn;
  if (branchedAt !== null && lsnToNumber(reference.stopLsn) > lsnToNumber(branchedAt)) {
    return `the reference ends at ${reference.stopLsn}, after timeline ${timeline} branched off at ${branchedAt}`;
  }
  return steps.slice(index);
}

/**
 * null when a backup on the history `steps` leads to can build on the
 * reference (same timeline, or an ancestor it ended on before the branch);
 * else why not. Pure.
 */
export function referenceOnHistory(
  reference: { id: string; timeline: number; stopLsn: string | null },
  steps: readonly TimelineStep[],
): string | null {
  const timeline = steps[steps.length - 1]!.timeline;
  if (reference.timeline === timeline) return null;
  const found = stepsFrom(steps, { timeline: reference.timeline, stopLsn: reference.stopLsn ?? "0/0" }, timeline);
  return typeof found === "string" ? `${found} (reference ${reference.id})` : null;
}

/**
 * What changed between a reference backup's start and this backup's start,
 * from the archive's per-segment summaries (written as segments are
 * archived), summarising on the spot what is not summarised yet — from the
 * spool, or from the archive's objects once the spool lacks a segment (a
 * spool lost or wiped: the backup stays differential or incremental) —
 * the segment this backup starts in only up to its start. The reference
 * may be on an earlier timeline only if it ended at or before the point
 * this backup's history (the server's, `current.history`) branched off it.
 */
export async function changesSince(
  summarizer: WalSummarizer,
  reference: BackupPoint & { readonly stopLsn: string },
  current: BackupPoint & { readonly history: readonly TimelineStep[] },
): Promise<ChangesSince> {
  const path_ = stepsFrom(current.history, reference, current.timeline);
  if (typeof path_ === "string") return { kind: "other-history", reason: path_ };
  const first = segmentNumber(reference.startLsn);
  // No record starts before this backup's start in its segment when it is the
  // segment's first (right after the long page header): nothing to read there.
  const startsSegment = lsnToNumber(current.startLsn) % SEGMENT_SIZE <= LONG_PAGE_HEADER_BYTES;
  const last = segmentNumber(current.startLsn) - (startsSegment ? 1 : 0);
  const segments = Array.from({ length: Math.max(0, last - first + 1) }, (_, index) => first + index);
  const whole = (startsSegment ? segments : segments.slice(0, -1)).map((segment) => ({
    timeline: timelineOfSegment(path_, segment),
    segment,
  }));
  // Whole segments from their stored summaries (made now if the periodic
  // pass has not yet: one pg_waldump per core); the segment this backup
  // starts in only up to its start, not stored.
  const [summaries, startSegment] = await Promise.all([
    summarizer.summariesOf(whole),
    startsSegment || segments.length === 0 ? null : summarizer.summarizeUpTo(timelineOfSegment(path_, last), last, current.startLsn),
  ]);
  if (startSegment) summaries.push(startSegment);
  const unreadable = summaries.find((summary: WalSegmentSummary) => !summary.complete);
  if (unreadable)
    return { kind: "unavailable", reason: `WAL segment ${unreadable.segment} could not be read: ${unreadable.error ?? "incomplete"}` };
  return { kind: "changes", changes: mergeSummaries(summaries), segments: summaries.length };
}
