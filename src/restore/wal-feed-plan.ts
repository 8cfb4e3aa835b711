import { historyTimelines, timelineOfSegment, type TimelineStep } from "../postgres/timelines";
import { historyFileName, parseSegmentName, segmentName } from "../postgres/wal-names";

/**
 * What a WalFeeder does next for one node: which files to fetch into its
 * relevo_wal/ and which to remove. Pure: the feeder does the I/O.
 */

/** A name a node's restore_command may be given: a segment or a timeline history. */
export function isWalFileName(name: string): boolean {
  return parseSegmentName(name) !== null || /^[0-9A-F]{8}\.history$/.test(name);
}

/**
 * The names a source holds as a node would ask for them: segments and
 * histories, a segment the archiver still receives (`X.partial`) under its
 * final name when the complete one is absent (replayed too, so a restore
 * "to the latest" loses nothing received). Anything else is dropped. Sorted.
 */
export function deliverableNames(names: readonly string[]): string[] {
  const present = new Set(names);
  const result = new Set<string>();
  for (const name of names) {
    if (isWalFileName(name)) result.add(name);
    const partialOf = /^([0-9A-F]{24})\.partial$/.exec(name)?.[1];
    if (partialOf && !present.has(partialOf)) result.add(partialOf);
  }
  return [...result].sort();
}

/**
 * The names among deliverableNames(names) that only a `.partial` backs: the
 * segment the archiver is still receiving. Prefetched, its copy would stop
 * where the receipt stood then, and a recovery reaching it later would end
 * there although the complete segment had arrived meanwhile: fetched only
 * when restore_command asks for it.
 */
export function receivingNames(names: readonly string[]): string[] {
  const present = new Set(names);
  return names.flatMap((name) => {
    const partialOf = /^([0-9A-F]{24})\.partial$/.exec(name)?.[1];
    return partialOf && !present.has(partialOf) ? [partialOf] : [];
  });
}

/**
 * The timeline recovery ends on: the one asked, or with "latest" the newest
 * whose history the source holds (PostgreSQL probes for histories upward
 * the same way), never older than the backup's own.
 */
export function targetTimeline(options: {
  readonly asked: number | "latest";
  readonly fromTimeline: number;
  readonly available: readonly string[];
}): number {
  if (options.asked !== "latest") return options.asked;
  return Math.max(options.fromTimeline, ...historyTimelines(options.available));
}

/** The history file a path needs read to be known (null: timeline 1 has none). */
export function historyNeeded(timeline: number): string | null {
  return timeline > 1 ? historyFileName(timeline) : null;
}

export interface FeedState {
  /** What the source can deliver (deliverableNames). */
  readonly available: ReadonlySet<string>;
  /** Those of them still being received (receivingNames): fetched only when asked for. */
  readonly receiving: ReadonlySet<string>;
  /** What is in the node's directory, or being written there. */
  readonly delivered: ReadonlySet<string>;
  /** The name restore_command asked for last; null before its first call. */
  readonly wanted: string | null;
  /**
   * The segment it asked for last (null before): where replay stands while
   * it asks for histories (PostgreSQL probes for newer timelines between
   * segments), so a probe neither refetches the backup's first segments nor
   * stops the trim.
   */
  readonly lastSegmentAsked?: string | null;
  /** The target timeline's path (timelinePath), to prefetch the files recovery will ask for. */
  readonly path: readonly TimelineStep[];
  /** The first segment recovery needs (the backup's start); prefetched from before the first request. */
  readonly fromSegment: number | null;
  /** How many segments beyond the one asked are kept ready. */
  readonly ahead: number;
}

export interface FeedPlan {
  /** In order of need: what restore_command waits for first, then histories, then segments along the path. */
  readonly fetch: string[];
  /** Segments before the one asked: replayed already (PostgreSQL asks in order). */
  readonly trim: string[];
}

export function feedPlan(state: FeedState): FeedPlan {
  const fetch: string[] = [];
  const want = (name: string, options: { asked: boolean } = { asked: false }): void => {
    if (!options.asked && state.receiving.has(name)) return;
    if (state.available.has(name) && !state.delivered.has(name) && !fetch.includes(name)) fetch.push(name);
  };
  if (state.wanted !== null) want(state.wanted, { asked: true });
  // Histories first: small, and PostgreSQL reads them before any segment (to build the timeline path, and to probe for newer timelines).
  for (const name of state.available) if (name.endsWith(".history")) want(name);
  const asked =
    (state.wanted === null ? null : parseSegmentName(state.wanted)) ??
    (state.lastSegmentAsked ? parseSegmentName(state.lastSegmentAsked) : null);
  const base = asked?.segment ?? state.fromSegment;
  if (base !== null) {
    for (let segment = base; segment <= base + state.ahead; segment += 1)
      want(segmentName(timelineOfSegment(state.path, segment), segment));
  }
  const trim =
    asked === null
      ? []
      : [...state.delivered].filter((name) => {
          const delivered = parseSegmentName(name);
          return delivered !== null && delivered.segment < asked.segment;
        });
  return { fetch, trim: trim.sort() };
}

/**
 * The `expected` list: every name the source can deliver that recovery may
 * ask for, i.e. histories and segments from `fromSegment` on (older ones
 * precede the backup). One a line.
 */
export function expectedList(available: Iterable<string>, fromSegment: number | null): string {
  const names = [...available].filter((name) => {
    const segment = parseSegmentName(name);
    return segment === null || fromSegment === null || segment.segment >= fromSegment;
  });
  return names
    .sort()
    .map((name) => `${name}\n`)
    .join("");
}
