import { createHash } from "node:crypto";
import { once } from "node:events";
import { PassThrough, Readable, type Writable } from "node:stream";
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

/** Feeds a file's chunks, in order, to `consume` (see NodeDriver.readChunks); false when the file is gone. */
export type ChunkSource = (consume: (chunk: Buffer) => Promise<void>) => Promise<boolean>;

/** Stores a body under the place its caller chose; aborted by `signal`, nothing is left there (see ObjectStore.put). */
export type ContentPut = (body: Readable, signal: AbortSignal) => Promise<void>;

/** Stored bytes buffered between the compressors and the object being written. */
const PUT_BUFFER_BYTES = 4 * 1024 * 1024;

/**
 * One large file into the repository from reused read buffers: CRC-32 of
 * the content; LZ4 frames compressed several at once and passed on in
 * order (gzip and none go through one stream); SHA-256 of what is stored;
 * all of it streamed through `put` into one object. A chunk is handed back
 * once what came of it is taken by the object's stream, so memory stays
 * bounded by the source's buffers and the stream's. null when the file is
 * gone (the put aborted: no object left).
 */
export async function storeChunks(source: ChunkSource, put: ContentPut, compression: Compression): Promise<CopiedFile | null> {
  const body = new PassThrough({ highWaterMark: PUT_BUFFER_BYTES });
  const abort = new AbortController();
  const stored = put(body, abort.signal);
  stored.catch(() => undefined); // awaited below; a failure meanwhile surfaces through the writes
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
      storedBytes += bytes.length;
      await writeWithBackpressure(body, bytes, stored);
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
          // The source reuses its buffer once this resolves; the object's stream may still hold the bytes.
          return writeInOrder(Promise.resolve(Buffer.from(chunk)));
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
    if (!found) {
      abort.abort();
      await stored.catch(() => undefined);
      return null;
    }
    body.end();
    await stored;
  } catch (error) {
    abort.abort();
    body.destroy();
    await stored.catch(() => undefined);
    throw error;
  }
  return { size, crc32: crc32Hex(content), storedBytes, storedSha256: storedHash.digest("hex") };
}

/**
 * Writes `bytes` to a stream an object is being stored from, waiting while
 * it is full; fails with the put's error if the put ends first.
 */
export async function writeWithBackpressure(body: Writable, bytes: Buffer, put: Promise<void>): Promise<void> {
  const putEnded = (): Promise<void> => put.then(() => Promise.reject(new Error("the object was stored before its content ended")));
  if (body.destroyed) return putEnded(); // the put failed and let go of its body: its error
  if (body.write(bytes)) return;
  await Promise.race([once(body, "drain"), putEnded()]);
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
 * A stored content, decoded, in chunks each valid until the next is
 * pulled; `onStored` gets the stored bytes' length and SHA-256 at the end.
 * `open` is called once the first chunk is wanted, and what it opened is
 * let go when the reader stops (at the end, on an error, or early). A
 * large file's LZ4 content is decoded in a worker thread, fed the stored
 * bytes from here (see lz4-worker-decode).
 */
export async function* storedContentChunks(
  open: () => Promise<Readable>,
  stored: StoredContent,
  onStored?: (summary: StoredSummary) => void,
): AsyncGenerator<Buffer> {
  const raw = await open();
  try {
    // Large files are stored alone; a bundled small file is not worth a thread.
    if (stored.compression === "lz4" && stored.offset === undefined) {
      yield* decodeLz4InWorker(raw, onStored);
      return;
    }
    const hash = createHash("sha256");
    let storedBytes = 0;
    const seen = tap(raw, (chunk) => {
      hash.update(chunk);
      storedBytes += chunk.length;
    });
    yield* decodedChunks(seen, stored.compression);
    onStored?.({ storedBytes, storedSha256: hash.digest("hex") });
  } finally {
    raw.destroy();
  }
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
