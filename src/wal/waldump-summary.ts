import { lsnFromNumber, lsnToNumber } from "../postgres/lsn";
/**
 * What one archived WAL segment changed, as a later differential or
 * incremental backup needs it (issue "Backups II"): the blocks each record
 * touched, per relation file and fork, and what block references do not
 * cover — relation files created or truncated (smgr records) and database
 * directories created or dropped (which a FILE_COPY CREATE DATABASE copies
 * without block references). Written once, when the segment is archived, so
 * that no backup re-reads a week of WAL.
 */
export interface RestorePointRecord {
  readonly name: string;
  readonly lsn: string;
}

export interface WalSegmentSummary {
  readonly formatVersion: 1;
  readonly segment: string;
  readonly timeline: number;
  /** "spcOid/dbOid/relfilenode" → fork ("main", "fsm", "vm", "init") → touched blocks as [first, last] ranges. */
  readonly blocks: Record<string, Record<string, Array<[number, number]>>>;
  /** Relation files created, as PostgreSQL names them ("base/5/16384"). */
  readonly created: readonly string[];
  /** Relation files truncated. */
  readonly truncated: readonly string[];
  /** Database directories created or dropped ("spcOid/dbOid"): to be copied whole. */
  readonly databases: readonly string[];
  /** Named restore points (pg_create_restore_point) the segment holds, in order: a restore to a name starts from a backup before it. */
  readonly restorePoints?: readonly RestorePointRecord[];
  /**
   * The time of the segment's last COMMIT or ABORT record (UTC, ISO), null
   * when it has none; absent in summaries written before it was recorded.
   * The latest time a restore can be asked for comes from here, from the
   * WAL itself: never from when a file or object was written (an upload is
   * minutes late, and a target past the WAL's last commit makes
   * PostgreSQL 15 end recovery with a FATAL).
   */
  readonly lastTransactionEndAt?: string | null;
  /**
   * Where that COMMIT or ABORT record ends (its LSN plus its length): past
   * the segment's end, the record is whole only with the next segment (see
   * Repository.archivedWalState). Absent in summaries written before it was
   * recorded.
   */
  readonly lastTransactionRecordEnd?: string | null;
  readonly records: number;
  /** pg_waldump read every record that starts in the segment without an error. */
  readonly complete: boolean;
  readonly error: string | null;
}

const BLOCK_REFERENCE = "blkref #";

/**
 * The time a COMMIT or ABORT record of pg_waldump's output carries ("desc:
 * COMMIT 2026-12-07 12:00:00.123456 UTC; …"), as ISO; null for any other
 * line, or a time not in UTC (pg_waldump prints its own process's time
 * zone: the summarizer runs it with TZ=UTC). Pure.
 */
export function transactionEndTime(line: string): string | null {
  const match = /desc: (?:COMMIT|ABORT) (\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)(\.\d+)? UTC\b/.exec(line);
  if (!match) return null;
  const fraction = (match[3] ?? ".0").slice(1).padEnd(3, "0").slice(0, 3);
  return `${match[1]}T${match[2]}.${fraction}Z`;
}

/** Where the record of a pg_waldump line ends ("len (rec/tot): 34/ 34, … lsn: 0/0F001700"): its LSN plus its total length; null when the line does not say. Pure. */
export function recordEnd(line: string): string | null {
  const match = /len \(rec\/tot\):\s*\d+\/\s*(\d+),.*?\blsn: ([0-9A-F]+\/[0-9A-F]+)/.exec(line);
  return match ? lsnFromNumber(lsnToNumber(match[2]!) + Number(match[1])) : null;
}

function* linesStartingWith(text: string, marker: string): Generator<string> {
  for (let at = text.indexOf(marker); at !== -1; at = text.indexOf(marker, at + marker.length)) {
    const end = text.indexOf("\n", at);
    yield text.slice(at, end === -1 ? text.length : end);
  }
}

/**
 * Pure: folds pg_waldump's lines into a summary's parts. A segment is about a
 * hundred thousand lines, so a line is scanned with indexOf, not regular
 * expressions (which cost as much as pg_waldump itself).
 */
export class SummaryBuilder {
  private readonly blocks = new Map<string, Map<string, Set<number>>>();
  private readonly created = new Set<string>();
  private readonly truncated = new Set<string>();
  private readonly databases = new Set<string>();
  private readonly restorePoints: RestorePointRecord[] = [];
  private lastTransactionEndAt: string | null = null;
  private lastTransactionRecordEnd: string | null = null;
  private records = 0;
  /** The main-fork set the previous reference went to, and "<relation> " to recognise it. */
  private last: { prefix: string; set: Set<number> } | null = null;

  /** One line of pg_waldump's output. */
  add(line: string): void {
    this.addText(line);
  }

  /**
   * Whole lines of pg_waldump's output (a chunk of its stdout cut at a line
   * end), scanned as one string: no line is split out but the rare storage
   * and database records.
   */
  addText(text: string): void {
    for (let at = text.startsWith("rmgr:") ? 0 : text.indexOf("\nrmgr:"); at !== -1; at = text.indexOf("\nrmgr:", at + 1))
      this.records += 1;
    // "blkref #0: rel 1663/5/16396 blk 114754 FPW" or "... rel 1663/5/16396 fork vm blk 0"
    for (let at = text.indexOf(BLOCK_REFERENCE); at !== -1; at = text.indexOf(BLOCK_REFERENCE, at + BLOCK_REFERENCE.length)) {
      const relationStart = text.indexOf(": rel ", at) + 6;
      if (relationStart < 6) break;
      let relationEnd: number;
      let set: Set<number> | null = null;
      // Consecutive references mostly name one relation: compared in place, not sliced out.
      if (this.last && text.startsWith(this.last.prefix, relationStart)) {
        relationEnd = relationStart + this.last.prefix.length - 1;
        set = this.last.set;
      } else {
        relationEnd = text.indexOf(" ", relationStart);
        if (relationEnd === -1) break;
      }
      let fork = "main";
      let cursor = relationEnd + 1;
      if (text.startsWith("fork ", cursor)) {
        const forkEnd = text.indexOf(" ", cursor + 5);
        fork = text.slice(cursor + 5, forkEnd);
        cursor = forkEnd + 1;
        set = null;
      }
      if (!text.startsWith("blk ", cursor)) continue;
      let block = 0;
      let digits = 0;
      for (let index = cursor + 4; index < text.length; index += 1, digits += 1) {
        const code = text.charCodeAt(index);
        if (code < 48 || code > 57) break;
        block = block * 10 + (code - 48);
      }
      if (digits === 0) continue;
      (set ?? this.setFor(text.slice(relationStart, relationEnd), fork)).add(block);
    }
    // Records whose line says more than its block references: smgr (relation files created, truncated) and database directories.
    for (const line of linesStartingWith(text, "rmgr: Storage")) {
      const storage = /desc: (CREATE|TRUNCATE) (\S+)/.exec(line);
      if (storage) (storage[1] === "CREATE" ? this.created : this.truncated).add(storage[2]!);
    }
    for (const line of linesStartingWith(text, "rmgr: Database")) {
      for (const dir of line.matchAll(/(?:dir|to) (\d+\/\d+)/g)) this.databases.add(dir[1]!);
    }
    for (const line of linesStartingWith(text, "rmgr: Transaction")) {
      const at = transactionEndTime(line);
      if (at === null) continue;
      this.lastTransactionEndAt = at;
      this.lastTransactionRecordEnd = recordEnd(line);
    }
    for (const line of linesStartingWith(text, "rmgr: XLOG")) {
      const point = /lsn: ([0-9A-F]+\/[0-9A-F]+),.* desc: RESTORE_POINT (.*)$/.exec(line);
      if (point) this.restorePoints.push({ name: point[2]!, lsn: point[1]! });
    }
  }

  private setFor(relation: string, fork: string): Set<number> {
    const forks = this.blocks.get(relation) ?? new Map<string, Set<number>>();
    this.blocks.set(relation, forks);
    const set = forks.get(fork) ?? new Set<number>();
    forks.set(fork, set);
    this.last = fork === "main" ? { prefix: `${relation} `, set } : null;
    return set;
  }

  build(segment: string, timeline: number, complete: boolean, error: string | null): WalSegmentSummary {
    const blocks: WalSegmentSummary["blocks"] = {};
    for (const [relation, forks] of [...this.blocks].sort(([a], [b]) => a.localeCompare(b))) {
      blocks[relation] = {};
      for (const [fork, set] of forks) blocks[relation][fork] = ranges([...set].sort((a, b) => a - b));
    }
    return {
      formatVersion: 1,
      segment,
      timeline,
      blocks,
      created: [...this.created].sort(),
      truncated: [...this.truncated].sort(),
      databases: [...this.databases].sort(),
      restorePoints: [...this.restorePoints],
      lastTransactionEndAt: this.lastTransactionEndAt,
      lastTransactionRecordEnd: this.lastTransactionRecordEnd,
      records: this.records,
      complete,
      error,
    };
  }
}

function ranges(sorted: readonly number[]): Array<[number, number]> {
  const result: Array<[number, number]> = [];
  for (const block of sorted) {
    const last = result[result.length - 1];
    if (last && block === last[1] + 1) last[1] = block;
    else result.push([block, block]);
  }
  return result;
}

/**
 * Matches pg_waldump's line of a record that starts in `segment` ("lsn:
 * 0/1E000028,", "lsn: 1/05009818,"): 16 MiB segments, 256 to a 4 GiB
 * "xlogid"; pg_waldump prints the low half as 8 hex digits.
 */
export function recordLineOfSegment(segment: number): RegExp {
  const high = Math.floor(segment / 256)
    .toString(16)
    .toUpperCase();
  const top = (segment % 256).toString(16).toUpperCase().padStart(2, "0");
  return new RegExp(`lsn: ${high}/${top}[0-9A-F]{6},`);
}
