import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, open, rename, rm } from "node:fs/promises";
import path from "node:path";
import { Transform, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGzip } from "node:zlib";
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
 * (gzip level 1: fast, and what Node ships), hash of what is stored, temp
 * file + fsync + rename. Never holds a whole file in memory.
 */
export async function storeStream(source: Readable, target: string, compression: Compression): Promise<CopiedFile> {
  await mkdir(path.dirname(target), { recursive: true, mode: 0o700 });
  const temp = `${target}.tmp-${process.pid}`;
  const content = hashingCounter();
  const stored = hashingCounter();
  try {
    const output = createWriteStream(temp, { mode: 0o600 });
    if (compression === "gzip") await pipeline(source, content, createGzip({ level: 1 }), stored, output);
    else await pipeline(source, content, stored, output);
    const handle = await open(temp, "r+");
    await handle.sync();
    await handle.close();
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
