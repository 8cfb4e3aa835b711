import type { ManifestEntry } from "./manifest";
import { BLOCK_SIZE, blockCount, rangesBelow, rangesInSegment, relationFileOf, unionRanges, type BlockRanges } from "./relation-files";
import type { WalSegmentSummary } from "../wal/waldump-summary";

/**
 * What changed in the cluster since a reference backup's start, from the WAL
 * segment summaries between that point and this backup's start. Pure.
 */
export interface ChangeSet {
  /** "spcOid/dbOid/relfilenode" → fork → touched blocks (relation-wide numbers). */
  readonly blocks: ReadonlyMap<string, ReadonlyMap<string, BlockRanges>>;
  /** Relation paths ("base/5/16384") created or truncated: copied whole. */
  readonly createdOrTruncated: ReadonlySet<string>;
  /** Database directories ("1663/16390") created, dropped or moved: copied whole. */
  readonly databases: ReadonlySet<string>;
}

export function mergeSummaries(summaries: readonly WalSegmentSummary[]): ChangeSet {
  const blocks = new Map<string, Map<string, Array<Array<[number, number]>>>>();
  const createdOrTruncated = new Set<string>();
  const databases = new Set<string>();
  for (const summary of summaries) {
    for (const [relation, forks] of Object.entries(summary.blocks)) {
      const byFork = blocks.get(relation) ?? new Map<string, Array<Array<[number, number]>>>();
      blocks.set(relation, byFork);
      for (const [fork, ranges] of Object.entries(forks)) byFork.set(fork, [...(byFork.get(fork) ?? []), ranges]);
    }
    for (const path of [...summary.created, ...summary.truncated]) createdOrTruncated.add(path);
    for (const database of summary.databases) databases.add(database);
  }
  const merged = new Map<string, Map<string, BlockRanges>>();
  for (const [relation, forks] of blocks) {
    merged.set(relation, new Map([...forks].map(([fork, sets]) => [fork, unionRanges(...sets)] as const)));
  }
  return { blocks: merged, createdOrTruncated, databases };
}

/**
 * How one file goes into a differential or incremental backup:
 * - `whole`: stored in full (files the reference lacks, every file that is
 *   not a relation's main fork and whose length or modification time changed — the free space map is not
 *   WAL-logged and visibility-map bits are cleared without block references —
 *   relations created or truncated, databases created, most blocks changed);
 * - `blocks`: only these blocks (none: unchanged);
 * - `scan`: the WAL is not available; read the file and keep the pages whose
 *   LSN is at or after the reference's start (or zero), and every block past
 *   the reference's length.
 */
export type FilePlan =
  | { readonly kind: "whole"; readonly reason: string }
  | { readonly kind: "blocks"; readonly blocks: BlockRanges }
  | { readonly kind: "scan"; readonly referenceBlocks: number };

export function planFile(
  file: { path: string; size: number; mtimeMs: number },
  reference: ManifestEntry | undefined,
  changes: ChangeSet | null,
): FilePlan {
  if (!reference || reference.type !== "file") return { kind: "whole", reason: "not in the reference" };
  const relation = relationFileOf(file.path);
  if (!relation || relation.fork !== "main" || file.size === 0) {
    // Unchanged by its length and modification time: every write to a data
    // file before this backup's checkpoint has reached the file (and moved its
    // mtime) by the time it is listed; later ones are replayed from the WAL.
    if (reference.size === file.size && reference.mtimeMs === file.mtimeMs && !reference.mtimeUnreliable)
      return { kind: "blocks", blocks: [] };
    return { kind: "whole", reason: relation ? `${relation.fork} fork changed` : "changed" };
  }
  if (file.size % BLOCK_SIZE !== 0 || reference.size % BLOCK_SIZE !== 0) return { kind: "whole", reason: "not whole blocks" };
  if (file.size < reference.size) return { kind: "whole", reason: "shorter than in the reference" };
  const referenceBlocks = reference.size / BLOCK_SIZE;
  if (!changes) return { kind: "scan", referenceBlocks };
  if (changes.databases.has(relation.database)) return { kind: "whole", reason: "database created or moved" };
  if (changes.createdOrTruncated.has(relation.smgrPath)) return { kind: "whole", reason: "relation created or truncated" };
  const fileBlocks = file.size / BLOCK_SIZE;
  const touched = rangesBelow(rangesInSegment(changes.blocks.get(relation.relation)?.get("main") ?? [], relation.segment), fileBlocks);
  // Blocks past the reference's length: an extension writes no WAL of its own until a page is used.
  const grown: BlockRanges = fileBlocks > referenceBlocks ? [[referenceBlocks, fileBlocks - 1]] : [];
  const blocks = unionRanges(touched, grown);
  if (blockCount(blocks) * 2 > fileBlocks) return { kind: "whole", reason: "most blocks changed" };
  return { kind: "blocks", blocks };
}

/** A page's LSN (pd_lsn: two little-endian 32-bit halves at its start) as a number. */
export function pageLsn(page: Buffer, at = 0): number {
  return page.readUInt32LE(at) * 2 ** 32 + page.readUInt32LE(at + 4);
}
