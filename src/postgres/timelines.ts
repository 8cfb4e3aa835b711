import type { Client } from "pg";
import { lsnToNumber } from "./lsn";
import { historyFileName, SEGMENT_SIZE } from "./wal-names";

/**
 * Timelines and their histories. Each promotion starts a new timeline whose
 * .history file lists its ancestors and the LSN at which each was left.
 * Two timelines with the same number can have different histories (two
 * promotions without a shared archive), so code that must know whether one
 * point is on another's past compares histories, never numbers alone.
 */

/** One timeline of a history, and the LSN its successor branched off at (null: the newest). */
export interface TimelineStep {
  readonly timeline: number;
  readonly switchLsn: string | null;
}

/**
 * The timelines that lead to `timeline`, oldest first, from its .history
 * file ("<parent>\t<switch LSN>\t<reason>" per ancestor). Pure.
 */
export function timelinePath(timeline: number, history: string | null): TimelineStep[] {
  const steps: TimelineStep[] = [];
  for (const line of (history ?? "").split("\n")) {
    const match = /^\s*(\d+)\s+([0-9A-Fa-f]+\/[0-9A-Fa-f]+)/.exec(line);
    if (match) steps.push({ timeline: Number(match[1]), switchLsn: match[2]!.toUpperCase() });
  }
  return [...steps, { timeline, switchLsn: null }];
}

/**
 * Which timeline's file holds a segment's WAL on the way along `path`: the
 * first timeline whose switch comes at or after the segment's end (the
 * segment a switch falls in is on the new timeline, which copies the old
 * one's records up to the switch). Pure.
 */
export function timelineOfSegment(path: readonly TimelineStep[], segment: number): number {
  const segmentEnd = (segment + 1) * SEGMENT_SIZE;
  for (const step of path) if (step.switchLsn === null || lsnToNumber(step.switchLsn) >= segmentEnd) return step.timeline;
  return path[path.length - 1]!.timeline;
}

/** The history of `timeline` as the server holds it (pg_wal/<timeline>.history; superuser). */
export async function serverHistory(client: Pick<Client, "query">, timeline: number): Promise<TimelineStep[]> {
  if (timeline === 1) return timelinePath(1, null);
  const file = `pg_wal/${historyFileName(timeline)}`;
  return timelinePath(timeline, (await client.query<{ content: string }>("SELECT pg_read_file($1) AS content", [file])).rows[0]!.content);
}
