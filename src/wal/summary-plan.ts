import { parseSegmentName, segmentName } from "../postgres/wal-names";

/**
 * Which archived segments the WAL summariser reads, and with what: pure
 * decisions over names (the spool's and the archive's together), no I/O.
 */

/** One segment to summarise whole (see WalSummarizer.summarizeWhole). */
export interface SummaryJob {
  readonly name: string;
  readonly timeline: number;
  readonly segment: number;
  /** The file read on into after it (see summarySuccessor); null when there is none yet. */
  readonly successor: string | null;
  /**
   * Whether its last record can be read no further than now allows: its
   * successor is complete, or a later timeline began (it is its timeline's
   * last). A final segment's summary is stored even incomplete (its retry
   * is decided by pendingSummaries); another only once complete.
   */
  readonly final: boolean;
}

/**
 * The file a whole segment is read on into (a record that starts in it may
 * end in the next): its own timeline's successor, else the one the
 * archiver is still receiving (`.partial`), else the earliest later
 * timeline's (which holds the same records up to the branch). `names` is
 * every name received or archived.
 */
export function summarySuccessor(timeline: number, segment: number, names: ReadonlySet<string>): string | null {
  const next = segmentName(timeline, segment + 1);
  if (names.has(next)) return next;
  if (names.has(`${next}.partial`)) return `${next}.partial`;
  let later: { name: string; timeline: number } | null = null;
  for (const name of names) {
    const parsed = parseSegmentName(name);
    if (parsed && parsed.segment === segment + 1 && parsed.timeline > timeline && (!later || parsed.timeline < later.timeline)) {
      later = { name, timeline: parsed.timeline };
    }
  }
  return later?.name ?? null;
}

/**
 * The segments a pass summarises, oldest first: every complete segment
 * received or archived (the spool may have lost it: it is then read from
 * the archive's object) that has no stored summary and whose last record
 * is readable (see SummaryJob.final; else its successor is being
 * received); and a stored incomplete one again when the file it would be
 * read on into is not the one it was last read with (`incomplete`: the
 * successor last tried, undefined when this process has not tried it), so
 * it is retried once what it lacked arrives, and not at every pass.
 */
export function pendingSummaries(input: {
  readonly names: readonly string[];
  readonly summarized: ReadonlySet<string>;
  readonly incomplete: ReadonlyMap<string, string | null | undefined>;
}): SummaryJob[] {
  const names = new Set(input.names);
  const segments = input.names.flatMap((name) => {
    const parsed = parseSegmentName(name);
    return parsed ? [{ name, ...parsed }] : [];
  });
  const newestTimeline = Math.max(0, ...segments.map((entry) => entry.timeline));
  const jobs: SummaryJob[] = [];
  for (const entry of segments.sort((a, b) => a.segment - b.segment || a.timeline - b.timeline)) {
    const successor = summarySuccessor(entry.timeline, entry.segment, names);
    if (input.summarized.has(entry.name)) {
      // A stored summary: complete (never read again), or incomplete and retried only with something new to read.
      if (!input.incomplete.has(entry.name) || input.incomplete.get(entry.name) === successor) continue;
    }
    const final = names.has(segmentName(entry.timeline, entry.segment + 1)) || entry.timeline !== newestTimeline;
    if (!final && successor === null) continue;
    jobs.push({ name: entry.name, timeline: entry.timeline, segment: entry.segment, successor, final });
  }
  return jobs;
}

/**
 * The summarised segments whose stored summary may be incomplete: those
 * with no successor on their own timeline among `names` (a timeline's
 * last, or the last before a hole). A summary is stored incomplete only
 * for a final segment pg_waldump could not read into its successor, so
 * only these are read (once per process) to learn whether to retry them.
 */
export function possiblyIncomplete(names: readonly string[], summarized: ReadonlySet<string>): string[] {
  const present = new Set(names);
  return names.filter((name) => {
    const parsed = parseSegmentName(name);
    return parsed !== null && summarized.has(name) && !present.has(segmentName(parsed.timeline, parsed.segment + 1));
  });
}
