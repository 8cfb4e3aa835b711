import { ErrorCode, RelevoError } from "../errors";
import type { FileEntry, NodeDriver, NodeRef } from "../nodes/node-driver";
import { BUNDLE_FILE_LIMIT, type BundleWriter } from "../storage/bundle-writer";
import { pageLsn, type FilePlan } from "./change-plan";
import { storeChunks, type ChunkSource } from "../storage/copy-file";
import type { BackupContentWriter } from "../storage/backup-content";
import type { StoredContent } from "./manifest";
import { BLOCK_SIZE, blockCount, type BlockRanges } from "./relation-files";

/**
 * How one file of a backup is stored, by its plan (see change-plan): whole,
 * only some blocks, or the blocks a page-LSN scan finds changed.
 */

/** Large files are read in 1 MiB chunks (one LZ4 frame each), four at a time per file. */
const LARGE_FILE_CHUNK = 1024 * 1024;
const LARGE_FILE_CHUNKS_IN_FLIGHT = 4;

export interface CopyTarget {
  readonly driver: NodeDriver;
  readonly source: NodeRef;
  readonly bundles: BundleWriter;
  /** Where each large file's content goes: an object of its own. */
  readonly content: BackupContentWriter;
}

/** What became of one file: its stored content, and for a block-level entry which blocks. */
export interface CopiedEntry {
  readonly size: number;
  readonly crc32?: string;
  readonly stored?: StoredContent;
  readonly blocks?: BlockRanges;
}

const CHUNKS = { chunkSize: LARGE_FILE_CHUNK, inFlight: LARGE_FILE_CHUNKS_IN_FLIGHT };

/** Content of up to BUNDLE_FILE_LIMIT bytes into a bundle, anything larger streamed into an object data/<n>. null when the file is gone. */
async function store(
  target: CopyTarget,
  file: FileEntry,
  expectedBytes: number,
  read: ChunkSource,
): Promise<{ size: number; crc32: string; stored: StoredContent } | null> {
  const { bundles } = target;
  if (expectedBytes <= BUNDLE_FILE_LIMIT) {
    const parts: Buffer[] = [];
    const collect = (chunk: Uint8Array): Promise<void> => {
      parts.push(Buffer.from(chunk));
      return Promise.resolve();
    };
    if (!(await read(collect))) return null;
    const content = Buffer.concat(parts);
    if (content.length <= BUNDLE_FILE_LIMIT) return bundles.add(content);
    return store(target, file, content.length, async (consume) => (await consume(content), true));
  }
  const relative = target.content.nextDataPath();
  const copied = await storeChunks(read, (body, signal) => target.content.put(relative, body, { signal }), bundles.compression);
  if (copied === null) return null;
  return {
    size: copied.size,
    crc32: copied.crc32,
    stored: { path: relative, bytes: copied.storedBytes, compression: bundles.compression, sha256: copied.storedSha256 },
  };
}

/** A whole file: a small one read at once into a bundle, a large one (or one that grew past the limit) streamed. */
async function copyWhole(target: CopyTarget, file: FileEntry): Promise<CopiedEntry | null> {
  const { driver, source } = target;
  if (file.size <= BUNDLE_FILE_LIMIT) {
    const read = await driver.readSmallFile(source, file.path, BUNDLE_FILE_LIMIT);
    if (read.state === "absent") return null;
    if (read.state === "read") return target.bundles.add(read.content);
  }
  return store(target, file, Number.MAX_SAFE_INTEGER, (consume) => driver.readChunks(source, file.path, CHUNKS, consume));
}

/** Only these blocks of a file (none: unchanged, nothing stored). */
async function copyBlocks(target: CopyTarget, file: FileEntry, blocks: BlockRanges): Promise<CopiedEntry | null> {
  if (blocks.length === 0) return { size: file.size, blocks };
  const ranges = blocks.map(([first, last]) => ({ offset: first * BLOCK_SIZE, length: (last - first + 1) * BLOCK_SIZE }));
  const stored = await store(target, file, blockCount(blocks) * BLOCK_SIZE, (consume) =>
    target.driver.readRanges(target.source, file.path, ranges, CHUNKS, consume),
  );
  return stored && { size: file.size, crc32: stored.crc32, stored: stored.stored, blocks };
}

/**
 * The blocks of a file that changed since `sinceLsn`, found by reading every
 * page (the WAL that would name them is not available): those whose LSN is
 * at or after it, those with no LSN (new, zeroed pages), and every block
 * past the reference's length. Blocks past the listed size are left to WAL
 * replay.
 */
async function copyScanned(target: CopyTarget, file: FileEntry, sinceLsn: number, referenceBlocks: number): Promise<CopiedEntry | null> {
  const kept: Array<[number, number]> = [];
  const fileBlocks = Math.floor(file.size / BLOCK_SIZE);
  let block = 0;
  let ragged = false;
  const stored = await store(target, file, Number.MAX_SAFE_INTEGER, (consume) =>
    target.driver.readChunks(target.source, file.path, CHUNKS, async (chunk) => {
      // Block numbers count whole pages from the start: a short read may only be the last.
      if (ragged)
        throw new RelevoError(ErrorCode.Internal, `${file.path}: a short read in the middle of the file; its pages cannot be numbered`);
      if (chunk.length % BLOCK_SIZE !== 0) ragged = true;
      const changed = Buffer.allocUnsafe(chunk.length);
      let length = 0;
      for (let at = 0; at + BLOCK_SIZE <= chunk.length && block < fileBlocks; at += BLOCK_SIZE, block += 1) {
        const lsn = pageLsn(chunk, at);
        if (lsn !== 0 && lsn < sinceLsn && block < referenceBlocks) continue;
        chunk.copy(changed, length, at, at + BLOCK_SIZE);
        length += BLOCK_SIZE;
        const last = kept[kept.length - 1];
        if (last && last[1] === block - 1) last[1] = block;
        else kept.push([block, block]);
      }
      if (length > 0) await consume(changed.subarray(0, length));
    }),
  );
  if (stored === null) return null;
  if (kept.length === 0) {
    await target.content.remove(stored.stored.path);
    return { size: file.size, blocks: [] };
  }
  return { size: file.size, crc32: stored.crc32, stored: stored.stored, blocks: kept };
}

export async function copyPlanned(target: CopyTarget, file: FileEntry, plan: FilePlan, sinceLsn: number): Promise<CopiedEntry | null> {
  switch (plan.kind) {
    case "whole":
      return copyWhole(target, file);
    case "blocks":
      return copyBlocks(target, file, plan.blocks);
    case "scan":
      return copyScanned(target, file, sinceLsn, plan.referenceBlocks);
  }
}
