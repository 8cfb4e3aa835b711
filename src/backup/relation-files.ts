/**
 * How PostgreSQL names relation files in a data directory, and how that maps
 * onto the "spcOid/dbOid/relfilenode" keys pg_waldump prints for block
 * references. Pure.
 */

/** PostgreSQL's page size (BLCKSZ) and relation segment size (RELSEG_SIZE), as built by Debian. */
export const BLOCK_SIZE = 8192;
export const BLOCKS_PER_SEGMENT = 131072;

const DEFAULT_TABLESPACE = "1663";
const GLOBAL_TABLESPACE = "1664";

export type Fork = "main" | "fsm" | "vm" | "init";

export interface RelationFile {
  /** "spcOid/dbOid/relfilenode", as pg_waldump's block references name the relation. */
  readonly relation: string;
  /** The relation's path as smgr records name it ("base/5/16384"): without fork or segment. */
  readonly smgrPath: string;
  /** "spcOid/dbOid": the database directory. */
  readonly database: string;
  readonly fork: Fork;
  /** Which 1 GB segment of the fork this file is (the ".N" suffix; 0 without one). */
  readonly segment: number;
}

const FILE_NAME = /^(\d+)(?:_(fsm|vm|init))?(?:\.(\d+))?$/;

/** The relation file a data-directory path names, or null for any other file. */
export function relationFileOf(path: string): RelationFile | null {
  const parts = path.split("/");
  let tablespace: string;
  let database: string;
  let name: string;
  let directory: string;
  if (parts.length === 3 && parts[0] === "base" && /^\d+$/.test(parts[1]!)) {
    [tablespace, database, name] = [DEFAULT_TABLESPACE, parts[1]!, parts[2]!];
    directory = `base/${database}`;
  } else if (parts.length === 2 && parts[0] === "global") {
    [tablespace, database, name] = [GLOBAL_TABLESPACE, "0", parts[1]!];
    directory = "global";
  } else if (parts.length === 5 && parts[0] === "pg_tblspc" && /^\d+$/.test(parts[1]!) && /^\d+$/.test(parts[3]!)) {
    [tablespace, database, name] = [parts[1]!, parts[3]!, parts[4]!];
    directory = parts.slice(0, 4).join("/");
  } else {
    return null;
  }
  const match = FILE_NAME.exec(name);
  if (!match) return null;
  return {
    relation: `${tablespace}/${database}/${match[1]}`,
    smgrPath: `${directory}/${match[1]}`,
    database: `${tablespace}/${database}`,
    fork: (match[2] ?? "main") as Fork,
    segment: match[3] ? Number(match[3]) : 0,
  };
}

/** Inclusive ranges of block numbers, ascending and not overlapping. */
export type BlockRanges = ReadonlyArray<readonly [number, number]>;

export function blockCount(ranges: BlockRanges): number {
  return ranges.reduce((sum, [first, last]) => sum + last - first + 1, 0);
}

/** Sorted, merged union of ranges (adjacent ranges joined). */
export function unionRanges(...sets: BlockRanges[]): Array<[number, number]> {
  const all = sets.flat().map(([first, last]) => [first, last] as [number, number]);
  all.sort((a, b) => a[0] - b[0]);
  const result: Array<[number, number]> = [];
  for (const [first, last] of all) {
    const previous = result[result.length - 1];
    if (previous && first <= previous[1] + 1) previous[1] = Math.max(previous[1], last);
    else result.push([first, last]);
  }
  return result;
}

/** The part of relation-wide block ranges inside one segment file, as that file's own block numbers. */
export function rangesInSegment(ranges: BlockRanges, segment: number): Array<[number, number]> {
  const first = segment * BLOCKS_PER_SEGMENT;
  const last = first + BLOCKS_PER_SEGMENT - 1;
  const result: Array<[number, number]> = [];
  for (const [from, to] of ranges) {
    if (to < first || from > last) continue;
    result.push([Math.max(from, first) - first, Math.min(to, last) - first]);
  }
  return result;
}

/** The ranges limited to blocks below `blocks`. */
export function rangesBelow(ranges: BlockRanges, blocks: number): Array<[number, number]> {
  const result: Array<[number, number]> = [];
  for (const [from, to] of ranges) if (from < blocks) result.push([from, Math.min(to, blocks - 1)]);
  return result;
}
