import { lsnToNumber } from "../postgres/lsn";
import type { TimelineStep } from "../postgres/timelines";
import { parseSegmentName, SEGMENT_SIZE } from "../postgres/wal-names";
import { readWalLongPageHeader, XLOG_PAGE_MAGIC_15 } from "../postgres/wal-page-header";

/**
 * What the WAL pusher checks of a file in the spool before it puts it into
 * the repository. The spool is the PostgreSQL OS user's (pg_receivewal
 * writes it as that user), so anything that user can write (`COPY … TO`
 * a file name, a hard link, a multi-GB file) may sit there under a WAL
 * name: without these checks it would become the archive's, for every
 * restore to replay and, as the newest segment, the archive's identity
 * (review 21, M1). Pure.
 */

/**
 * The largest `.history` file the pusher reads. PostgreSQL sets no limit:
 * a history has one line per ancestor timeline (`tli<TAB>lsn<TAB>reason`,
 * the reason a recovery target's description, under a page), written
 * by writeTimeLineHistory as the parent's lines plus one. 1 MiB holds
 * thousands of timelines; a larger file is no history PostgreSQL wrote,
 * and it is never read whole into memory.
 */
export const HISTORY_MAX_BYTES = 1024 * 1024;

/** What fstat says of an opened spool file. */
export interface SpoolFileFacts {
  readonly bytes: number;
  /** Hard links: a second name for the file is someone's doing, never pg_receivewal's. */
  readonly links: number;
}

/**
 * Why the segment file `name` must not be pushed; null when it may: it is
 * exactly one segment long, its first page is PostgreSQL 15's long header
 * for that very segment (page address the segment's start, timeline the
 * name's or an ancestor's: a timeline's first segment begins with its
 * parent's pages, copied at the promotion) and, once the archive's system
 * identifier is known, that cluster's.
 */
export function segmentRefusal(
  name: string,
  facts: SpoolFileFacts,
  firstPage: Buffer,
  archiveSystemIdentifier: string | null,
): string | null {
  const parsed = parseSegmentName(name);
  if (!parsed) return `${name} is not a segment name`;
  if (facts.links > 1) return `it has ${facts.links} hard links (pg_receivewal's files have one)`;
  if (facts.bytes !== SEGMENT_SIZE) return `it is ${facts.bytes} bytes, not a segment's ${SEGMENT_SIZE}`;
  const header = readWalLongPageHeader(firstPage);
  if (!header) return "its first page is cut short";
  if (header.magic !== XLOG_PAGE_MAGIC_15)
    return `its first page's magic is 0x${header.magic.toString(16)}, not PostgreSQL 15's 0x${XLOG_PAGE_MAGIC_15.toString(16)}`;
  if (!header.longHeader) return "its first page has no long header";
  if (header.segmentSize !== SEGMENT_SIZE) return `its header names segments of ${header.segmentSize} bytes, not ${SEGMENT_SIZE}`;
  if (header.pageAddress !== BigInt(parsed.segment) * BigInt(SEGMENT_SIZE))
    return `its first page is at 0x${header.pageAddress.toString(16)}, not where segment ${name} starts`;
  if (header.timeline < 1 || header.timeline > parsed.timeline)
    return `its first page is of timeline ${header.timeline}, past the name's ${parsed.timeline}`;
  if (archiveSystemIdentifier !== null && header.systemIdentifier !== archiveSystemIdentifier)
    return `its system identifier ${header.systemIdentifier} is not the archive's ${archiveSystemIdentifier}`;
  return null;
}

/** A parsed `.history` file: its timeline and its ancestors (oldest first, each with the LSN it was left at). */
export type ParsedHistory =
  | { readonly ok: true; readonly timeline: number; readonly ancestors: readonly TimelineStep[] }
  | { readonly ok: false; readonly reason: string };

const HISTORY_NAME = /^([0-9A-F]{8})\.history$/;
/** `tli<TAB>hi/lo`, then the reason: as writeTimeLineHistory prints it, and as readTimeLineHistory scans it. */
const HISTORY_LINE = /^(\d{1,10})\t([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})(?:\t[^\0]*)?$/;

/**
 * Parses the history file `name` as PostgreSQL's readTimeLineHistory does
 * (blank lines and `#` comments skipped), more strictly: every other line
 * `tli<TAB>lsn[<TAB>reason]`, timelines increasing and each below the
 * file's own (the name's), at least one (timeline 1 has no history).
 */
export function parseHistoryFile(name: string, facts: SpoolFileFacts, content: Buffer): ParsedHistory {
  const named = HISTORY_NAME.exec(name);
  if (!named) return { ok: false, reason: `${name} is not a history file name` };
  const timeline = parseInt(named[1]!, 16);
  if (timeline < 2) return { ok: false, reason: `timeline ${timeline} has no history file` };
  if (facts.links > 1) return { ok: false, reason: `it has ${facts.links} hard links (pg_receivewal's files have one)` };
  if (facts.bytes > HISTORY_MAX_BYTES) return { ok: false, reason: `it is ${facts.bytes} bytes, over a history's ${HISTORY_MAX_BYTES}` };
  const ancestors: TimelineStep[] = [];
  const lines = content.toString("utf8").split("\n");
  for (const [index, line] of lines.entries()) {
    const trimmed = line.trimStart();
    if (trimmed === "" || trimmed.startsWith("#")) continue;
    const match = HISTORY_LINE.exec(trimmed.replace(/\r$/, ""));
    if (!match) return { ok: false, reason: `line ${index + 1} is not "timeline<TAB>LSN<TAB>reason"` };
    const parent = Number(match[1]);
    const previous = ancestors.at(-1)?.timeline ?? 0;
    if (parent <= previous) return { ok: false, reason: `line ${index + 1}: timeline ${parent} does not follow ${previous}` };
    if (parent >= timeline) return { ok: false, reason: `line ${index + 1}: timeline ${parent} is not below the file's own ${timeline}` };
    ancestors.push({ timeline: parent, switchLsn: `${match[2]!.toUpperCase()}/${match[3]!.toUpperCase()}` });
  }
  if (ancestors.length === 0) return { ok: false, reason: "it names no parent timeline" };
  return { ok: true, timeline, ancestors };
}

/**
 * What to do with a well-formed history against the timeline history of
 * the primary the archiver streams from (`primary`: oldest first, its own
 * timeline last; null while the archiver has prepared none):
 * - "push": the primary's history passes through its timeline, by the
 *   same ancestors switched at the same LSNs;
 * - "hold": not yet: no primary prepared, or its timeline is past the
 *   primary's or off its path (pg_receivewal fetches only the histories
 *   of the timelines it streams). A history planted for a future timeline
 *   is so never put (once put, a history is never replaced): when the
 *   primary reaches that timeline, the planted one is refused;
 * - a refusal: the primary went through that timeline by another path.
 */
export function historyAgainstPrimary(
  history: { readonly timeline: number; readonly ancestors: readonly TimelineStep[] },
  primary: readonly TimelineStep[] | null,
): "push" | "hold" | { readonly refused: string } {
  if (primary === null) return "hold";
  const at = primary.findIndex((step) => step.timeline === history.timeline);
  if (at < 0) return "hold";
  const expected = primary.slice(0, at);
  const same =
    expected.length === history.ancestors.length &&
    expected.every((step, index) => {
      const ancestor = history.ancestors[index]!;
      return (
        step.timeline === ancestor.timeline &&
        step.switchLsn !== null &&
        ancestor.switchLsn !== null &&
        lsnToNumber(step.switchLsn) === lsnToNumber(ancestor.switchLsn)
      );
    });
  return same ? "push" : { refused: `the primary's history reaches timeline ${history.timeline} by other ancestors or switch points` };
}
