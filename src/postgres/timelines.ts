import type { Client } from "pg";
import { lsnToNumber } from "./lsn";
import { historyFileName, parseSegmentName, SEGMENT_SIZE } from "./wal-names";

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

/**
 * The archived segment files that hold the WAL from `fromLsn` to `toLsn`
 * along `path` (see timelineOfSegment): a point on an ancestor timeline,
 * before the branch, is read from the ancestor's files. Pure.
 */
export function segmentFilesAlong(
  path: readonly TimelineStep[],
  fromLsn: string,
  toLsn: string,
): Array<{ readonly timeline: number; readonly segment: number }> {
  const files: Array<{ timeline: number; segment: number }> = [];
  const last = Math.floor(lsnToNumber(toLsn) / SEGMENT_SIZE);
  for (let segment = Math.floor(lsnToNumber(fromLsn) / SEGMENT_SIZE); segment <= last; segment += 1) {
    files.push({ timeline: timelineOfSegment(path, segment), segment });
  }
  return files;
}

/** The history of `timeline` as the server holds it (pg_wal/<timeline>.history; superuser). */
export async function serverHistory(client: Pick<Client, "query">, timeline: number): Promise<TimelineStep[]> {
  if (timeline === 1) return timelinePath(1, null);
  const file = `pg_wal/${historyFileName(timeline)}`;
  return timelinePath(timeline, (await client.query<{ content: string }>("SELECT pg_read_file($1) AS content", [file])).rows[0]!.content);
}

/**
 * The timeline a standby without a running WAL receiver has reached. Its
 * control file names the timeline of its last restartpoint, which lags a
 * timeline switch it has since followed until its checkpointer's next
 * restartpoint (a standby restarted after a switchover or failback keeps
 * the old number for up to checkpoint_timeout), and the receiver's
 * received_tli is gone with the receiver. Its pg_wal says more: the newest
 * timeline whose history passes through the restartpoint's timeline, whose
 * branch point the standby's WAL has reached (`lsn`: received, else
 * replayed: a promotion replays all of it), and whose WAL it holds (a
 * segment file of that timeline: a standby that refused a branch, having
 * gone past its branch point on the old timeline, may keep its history
 * file, fetched by the receiver, but never streams its WAL). Pure.
 */
export function reachedTimeline(options: {
  readonly restartpointTimeline: number;
  readonly lsn: string | null;
  /** The histories of the timelines of pg_wal's .history files (see timelinePath). */
  readonly histories: ReadonlyArray<readonly TimelineStep[]>;
  /** The timelines of pg_wal's segment files. */
  readonly segmentTimelines: ReadonlySet<number>;
}): { readonly timeline: number; readonly history: readonly TimelineStep[] | null } {
  const { restartpointTimeline, lsn } = options;
  let reached: { timeline: number; history: readonly TimelineStep[] | null } = { timeline: restartpointTimeline, history: null };
  if (lsn === null) return reached;
  for (const path of options.histories) {
    const timeline = path[path.length - 1]!.timeline;
    const branchPoint = path.length > 1 ? path[path.length - 2]!.switchLsn : null;
    if (timeline <= reached.timeline || branchPoint === null) continue;
    if (!path.some((step) => step.timeline === restartpointTimeline)) continue;
    if (lsnToNumber(branchPoint) > lsnToNumber(lsn) || !options.segmentTimelines.has(timeline)) continue;
    reached = { timeline, history: path };
  }
  return reached;
}

/**
 * A standby's reached timeline and its history, read from its pg_wal (see
 * reachedTimeline; superuser). `history` is null when the restartpoint's
 * own timeline is the newest reached: serverHistory reads that one.
 */
export async function readReachedTimeline(
  client: Pick<Client, "query">,
  options: { readonly restartpointTimeline: number; readonly lsn: string | null },
): Promise<{ readonly timeline: number; readonly history: readonly TimelineStep[] | null }> {
  const names = (await client.query<{ name: string }>("SELECT name FROM pg_ls_waldir()")).rows.map((row) => row.name);
  const segmentTimelines = new Set(names.flatMap((name) => parseSegmentName(name)?.timeline ?? []));
  const newer = historyTimelines(names).filter((timeline) => timeline > options.restartpointTimeline);
  const histories = await Promise.all(newer.map((timeline) => serverHistory(client, timeline)));
  return reachedTimeline({ ...options, histories, segmentTimelines });
}

/** Whether `path` (a timeline's ancestry) is `of`, or the start of it: the same timelines, left at the same LSNs. */
export function isAncestorPath(path: readonly TimelineStep[], of: readonly TimelineStep[]): boolean {
  if (path.length > of.length) return false;
  return path.every((step, index) => {
    const other = of[index]!;
    if (step.timeline !== other.timeline) return false;
    // The last step of `path` is its own timeline (no switch yet); it only has to lie on `of`.
    if (index === path.length - 1) return true;
    return step.switchLsn !== null && other.switchLsn !== null && lsnToNumber(step.switchLsn) === lsnToNumber(other.switchLsn);
  });
}

/**
 * Of several histories, the one every other lies on (its timeline is the
 * newest, and the others are its past): its key; null when they diverged
 * (no such one), or when there is nothing to choose. Pure.
 */
export function newestOnEveryHistory<K>(histories: ReadonlyArray<{ readonly key: K; readonly path: readonly TimelineStep[] }>): K | null {
  const newest = histories.find((candidate) => histories.every((other) => isAncestorPath(other.path, candidate.path)));
  return newest?.key ?? null;
}

/** The timeline numbers of the .history files among `names` (file names in pg_wal or an archive). */
export function historyTimelines(names: readonly string[]): number[] {
  return names.map((name) => /(?:^|\/)([0-9A-F]{8})\.history$/.exec(name)?.[1]).flatMap((hex) => (hex ? [parseInt(hex, 16)] : []));
}

/**
 * The history files a stopped node must find in its pg_wal before it is
 * promoted. PostgreSQL picks the timeline after the newest it finds by
 * probing its own + 1, + 2, … and stopping at the first history it cannot
 * find (in pg_wal, or through restore_command): a history missing there
 * makes it pick a number that may be taken already, two histories under one
 * number. So every timeline above `own` whose history the lost primary's
 * pg_wal (`lostNode`) or the archive (`archive`) holds, each read from the
 * lost node when it has it (the history it made), else from the archive;
 * oldest first. Pure.
 */
export function historiesToCopy(options: {
  readonly own: number;
  readonly lostNode: readonly string[];
  readonly archive: readonly string[];
}): Array<{ readonly timeline: number; readonly from: "lost-node" | "archive" }> {
  const fromLost = new Set(historyTimelines(options.lostNode).filter((timeline) => timeline > options.own));
  const fromArchive = historyTimelines(options.archive).filter((timeline) => timeline > options.own && !fromLost.has(timeline));
  return [
    ...[...fromLost].map((timeline) => ({ timeline, from: "lost-node" as const })),
    ...fromArchive.map((timeline) => ({ timeline, from: "archive" as const })),
  ].sort((a, b) => a.timeline - b.timeline);
}

/** The timeline PostgreSQL picks when a node on `own` whose pg_wal holds histories of `known` timelines is promoted (see historiesToCopy). Pure. */
export function timelineAfterPromotion(own: number, known: readonly number[]): number {
  let next = own + 1;
  while (known.includes(next)) next += 1;
  return next;
}

/**
 * The files among `names` (an archive's) of a timeline numbered `timeline`
 * or above: segments, partial segments and histories. Read before a node
 * was promoted to `timeline`, they are another branch's (the node's own
 * files came later), under a number the node now uses or above it. Pure.
 */
export function filesOfTimelinesFrom(names: readonly string[], timeline: number): string[] {
  return names.filter((name) => {
    const hex = /^([0-9A-F]{8})(?:[0-9A-F]{16}(?:\.partial)?|\.history)$/.exec(name)?.[1];
    return hex !== undefined && parseInt(hex, 16) >= timeline;
  });
}
