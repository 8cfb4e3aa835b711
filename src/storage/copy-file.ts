import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { execFile } from "node:child_process";
import { mkdir, open, rename, rm } from "node:fs/promises";
import { promisify } from "node:util";
import path from "node:path";
import { Readable } from "node:stream";
import { createGunzip, createGzip } from "node:zlib";
import { crc32 } from "@node-rs/crc32";
import { pipeline } from "node:stream/promises";
import { lz4Decode, lz4DecodeBuffer, lz4Frame } from "./lz4-stream";
import { decodeLz4InWorker, type StoredSummary } from "./lz4-worker-decode";
import type { Compression, StoredContent } from "../backup/manifest";

export interface CopiedFile {
  readonly size: number;
  readonly crc32: string;
  readonly storedBytes: number;
  readonly storedSha256: string;
}

/**
 * The content checksum: the standard CRC-32 (zlib's polynomial), 8 hex
 * digits. Computed with SIMD (@node-rs/crc32, ≈6 GB/s here) rather than
 * zlib's (≈2 GB/s): it runs on the event loop for every byte copied,
 * restored or verified, and was a third of a large file's copy time.
 */
export function contentCrc32(data: Buffer): string {
  return crc32Hex(crc32(data));
}

/** The running CRC-32 of a content after one more chunk. */
export function updateCrc32(previous: number, chunk: Buffer): number {
  return crc32(chunk, previous);
}

export function crc32Hex(value: number): string {
  return (value >>> 0).toString(16).padStart(8, "0");
}

/**
 * The stored (still compressed) bytes of one file, from its own object or
 * its range of a bundle. `storedPath` is where `stored.path` lives.
 */
export function openStoredContent(storedPath: string, stored: StoredContent): Readable {
  if (stored.bytes === 0) return Readable.from([]);
  const start = stored.offset ?? 0;
  return createReadStream(storedPath, { start, end: start + stored.bytes - 1, highWaterMark: 1024 * 1024 });
}

/** Feeds a file's chunks, in order, to `consume` (see NodeDriver.readChunks); false when the file is gone. */
export type ChunkSource = (consume: (chunk: Buffer) => Promise<void>) => Promise<boolean>;

/**
 * One large file into the repository from reused read buffers: CRC-32 of
 * the content; LZ4 frames compressed several at once and written in order
 * (gzip and none go through one stream); SHA-256 of what is stored; temp
 * file + rename. A chunk is handed back once what came of it is written, so
 * memory stays bounded by the source's buffers. null when the file is gone.
 */
export async function storeChunks(source: ChunkSource, target: string, compression: Compression): Promise<CopiedFile | null> {
  await mkdir(path.dirname(target), { recursive: true, mode: 0o700 });
  const temp = `${target}.tmp-${process.pid}`;
  const handle = await open(temp, "w", 0o600);
  let content = 0;
  let size = 0;
  const storedHash = createHash("sha256");
  let storedBytes = 0;
  // Writes happen one after another, in stream order.
  let written: Promise<void> = Promise.resolve();
  const writeInOrder = (data: Promise<Buffer>): Promise<void> => {
    written = written.then(async () => {
      const bytes = await data;
      storedHash.update(bytes);
      let done = 0;
      while (done < bytes.length) done += (await handle.write(bytes, done, bytes.length - done, storedBytes + done)).bytesWritten;
      storedBytes += bytes.length;
    });
    return written;
  };
  const gzip = compression === "gzip" ? createGzip({ level: 1 }) : null;
  const gzipEnded = gzip ? new Promise<void>((resolve, reject) => gzip.on("end", resolve).on("error", reject)) : null;
  gzip?.on("data", (data: Buffer) => void writeInOrder(Promise.resolve(data)).catch(() => undefined));
  try {
    const found = await source(async (chunk) => {
      content = updateCrc32(content, chunk);
      size += chunk.length;
      switch (compression) {
        case "lz4":
          return writeInOrder(lz4Frame(chunk));
        case "none":
          return writeInOrder(Promise.resolve(chunk));
        case "gzip":
          // zlib calls back once it no longer needs the chunk.
          return new Promise<void>((resolve, reject) => gzip!.write(chunk, (error) => (error ? reject(error) : resolve())));
      }
    });
    if (gzip) {
      gzip.end();
      await gzipEnded;
    }
    await written;
    await handle.close();
    if (!found) {
      await rm(temp, { force: true });
      return null;
    }
    await rename(temp, target);
  } catch (error) {
    await handle.close().catch(() => undefined);
    await rm(temp, { force: true });
    throw error;
  }
  return { size, crc32: crc32Hex(content), storedBytes, storedSha256: storedHash.digest("hex") };
}

/** Runs `work` over `items` with at most `parallelism` at a time. */
export async function forEachParallel<T>(items: readonly T[], parallelism: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  // What `work` threw, in order: the first is rethrown once the running items end.
  const failures: unknown[] = [];
  const worker = async (): Promise<void> => {
    while (failures.length === 0 && next < items.length) {
      const item = items[next++]!;
      try {
        await work(item);
      } catch (error) {
        failures.push(error);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, parallelism) }, worker));
  if (failures.length > 0) throw failures[0];
}

/** Content decoded from stored bytes: LZ4 several frames at once, gzip through zlib. */
export function decodedChunks(stored: AsyncIterable<Buffer>, compression: Compression): AsyncIterable<Buffer> {
  switch (compression) {
    case "lz4":
      return lz4Decode(stored);
    case "gzip": {
      const gunzip = createGunzip();
      pipeline(Readable.from(stored), gunzip).catch((error: Error) => gunzip.destroy(error));
      return gunzip;
    }
    case "none":
      return stored;
  }
}

/**
 * A stored file's content, decoded, in chunks each valid until the next is
 * pulled; `onStored` gets the stored bytes' length and SHA-256 at the end.
 * A large file's LZ4 content is decoded in a worker thread (see lz4-worker-decode).
 */
export function storedContentChunks(
  storedPath: string,
  stored: StoredContent,
  onStored?: (summary: StoredSummary) => void,
): AsyncIterable<Buffer> {
  // Large files are stored alone; a bundled small file is not worth a thread.
  if (stored.compression === "lz4" && stored.offset === undefined)
    return decodeLz4InWorker(storedPath, { start: 0, bytes: stored.bytes }, onStored);
  const hash = createHash("sha256");
  let storedBytes = 0;
  const raw = tap(openStoredContent(storedPath, stored), (chunk) => {
    hash.update(chunk);
    storedBytes += chunk.length;
  });
  return (async function* () {
    yield* decodedChunks(raw, stored.compression);
    onStored?.({ storedBytes, storedSha256: hash.digest("hex") });
  })();
}

/** Passes chunks through unchanged, showing each to `see` first. */
export async function* tap(source: AsyncIterable<Buffer>, see: (chunk: Buffer) => void): AsyncGenerator<Buffer> {
  for await (const chunk of source) {
    see(chunk);
    yield chunk;
  }
}

/** A whole stored content (a small file's bundle range) decoded into one buffer. */
export async function decodeBuffer(stored: Buffer, compression: Compression): Promise<Buffer> {
  if (compression === "none") return stored;
  if (compression === "lz4") return lz4DecodeBuffer(stored);
  const parts: Buffer[] = [];
  for await (const chunk of decodedChunks(Readable.from([stored]), compression)) parts.push(chunk);
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}

/** The file name suffix of stored content. */
export function storedSuffix(compression: Compression): string {
  return compression === "none" ? "" : `.${compression}`;
}

/** Flushes the whole file system holding `path` to disk (syncfs(2), through coreutils' `sync -f`). */
export async function syncFileSystem(path: string): Promise<void> {
  await promisify(execFile)("sync", ["-f", path]);
}
