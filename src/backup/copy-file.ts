import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { execFile } from "node:child_process";
import { mkdir, rename, rm } from "node:fs/promises";
import { promisify } from "node:util";
import path from "node:path";
import { Transform, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip, createGzip } from "node:zlib";
import { createLz4Compress, createLz4Decompress } from "./lz4-stream";
import type { Compression } from "./manifest";

export interface CopiedFile {
  readonly size: number;
  readonly sha256: string;
  readonly storedBytes: number;
  readonly storedSha256: string;
}

/** Counts and hashes what flows through it. */
export function hashingCounter(): Transform & { result(): { bytes: number; sha256: string } } {
  const hash = createHash("sha256");
  let bytes = 0;
  const transform = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk);
      bytes += chunk.length;
      callback(null, chunk);
    },
  }) as Transform & { result(): { bytes: number; sha256: string } };
  transform.result = () => ({ bytes, sha256: hash.digest("hex") });
  return transform;
}

/**
 * Streams one file into the repository: hash of the content, compression
 * (lz4 by default: fast; gzip level 1 when smaller matters more), hash of
 * what is stored, temp file + fsync + rename. Never holds a whole file in memory.
 */
export async function storeStream(source: Readable, target: string, compression: Compression): Promise<CopiedFile> {
  // No fsync per file (on this kind of disk a thousand small fsyncs cost
  // seconds): the caller syncs the repository's file system once, with
  // syncFileSystem, before it writes the manifest that makes the backup count.
  await mkdir(path.dirname(target), { recursive: true, mode: 0o700 });
  const temp = `${target}.tmp-${process.pid}`;
  const content = hashingCounter();
  const stored = hashingCounter();
  try {
    const output = createWriteStream(temp, { mode: 0o600 });
    const codec = compressor(compression);
    if (codec) await pipeline(source, content, codec, stored, output);
    else await pipeline(source, content, stored, output);
    await rename(temp, target);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
  const contentResult = content.result();
  const storedResult = stored.result();
  return { size: contentResult.bytes, sha256: contentResult.sha256, storedBytes: storedResult.bytes, storedSha256: storedResult.sha256 };
}

/** Runs `work` over `items` with at most `parallelism` at a time. */
export async function forEachParallel<T>(items: readonly T[], parallelism: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: unknown = null;
  const worker = async (): Promise<void> => {
    while (failure === null && next < items.length) {
      const item = items[next++]!;
      try {
        await work(item);
      } catch (error) {
        failure ??= error;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, parallelism) }, worker));
  if (failure !== null) throw failure;
}

export function compressor(compression: Compression): Transform | null {
  switch (compression) {
    case "lz4":
      return createLz4Compress();
    case "gzip":
      return createGzip({ level: 1 });
    case "none":
      return null;
  }
}

export function decompressor(compression: Compression): Transform | null {
  switch (compression) {
    case "lz4":
      return createLz4Decompress();
    case "gzip":
      return createGunzip();
    case "none":
      return null;
  }
}

/** The file name suffix of stored content. */
export function storedSuffix(compression: Compression): string {
  return compression === "none" ? "" : `.${compression}`;
}

/** Flushes the whole file system holding `path` to disk (syncfs(2), through coreutils' `sync -f`). */
export async function syncFileSystem(path: string): Promise<void> {
  await promisify(execFile)("sync", ["-f", path]);
}
