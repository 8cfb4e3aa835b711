import { lstat, mkdir, open, readFile, readdir, rename, rm, type FileHandle } from "node:fs/promises";
import { chownNoFollow, createOwnedFile, openOwnedTemp } from "../../util/owned-files";
import { publishDurably, temporaryNameFor } from "../../util/durable-file";
import type { Readable } from "node:stream";
import path from "node:path";
import type { ByteRange, ChunkedReadOptions, FileEntry, SmallFileRead } from "../node-driver";
import type { OsIdentity } from "../os-user";
import { resolveInside } from "../data-paths";

export { resolveInside } from "../data-paths";

export async function readOptionalFile(file: string): Promise<Buffer | null> {
  try {
    return await readFile(file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
}

/** Opens a file for reading; null when it does not exist. */
async function openIfExists(file: string): Promise<FileHandle | null> {
  try {
    return await open(file, "r");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
}

/** See NodeDriver.readChunks: a fixed set of buffers, reused. */
export async function readLocalChunks(
  file: string,
  options: ChunkedReadOptions,
  consume: (chunk: Buffer) => Promise<void>,
): Promise<boolean> {
  let position = 0;
  return pumpReads(
    file,
    options,
    consume,
    (buffer) => ({ position, length: buffer.length }),
    (read) => {
      position += read;
      return read > 0 ? "use" : "stop";
    },
  );
}

/** See NodeDriver.readRanges: the ranges in pieces of at most one buffer, past the end read as zeros. */
export async function readLocalRanges(
  file: string,
  ranges: ReadonlyArray<ByteRange>,
  options: ChunkedReadOptions,
  consume: (chunk: Buffer) => Promise<void>,
): Promise<boolean> {
  let index = 0;
  let done = 0; // of ranges[index]
  return pumpReads(
    file,
    options,
    consume,
    (buffer) => {
      while (index < ranges.length && done >= ranges[index]!.length) [index, done] = [index + 1, 0];
      const range = ranges[index];
      return range ? { position: range.offset + done, length: Math.min(buffer.length, range.length - done) } : null;
    },
    (read, wanted, buffer) => {
      buffer.fill(0, read, wanted);
      done += wanted;
      return "use-whole";
    },
  );
}

/**
 * The loop under both readers: a fixed set of buffers, one read at a time,
 * each chunk handed to `consume` and its buffer reused once that settles.
 * `next` says where to read into a free buffer (null: done); `after` what
 * to make of a read: use it, use the whole wanted length, or stop.
 */
async function pumpReads(
  file: string,
  options: ChunkedReadOptions,
  consume: (chunk: Buffer) => Promise<void>,
  next: (buffer: Buffer) => { position: number; length: number } | null,
  after: (read: number, wanted: number, buffer: Buffer) => "use" | "use-whole" | "stop",
): Promise<boolean> {
  const handle = await openIfExists(file);
  if (!handle) return false;
  const free: Buffer[] = Array.from({ length: Math.max(1, options.inFlight) }, () => Buffer.allocUnsafeSlow(options.chunkSize));
  const outstanding = new Set<Promise<void>>();
  // What the consumers threw, in order: the first is rethrown once reading stops.
  const failures: unknown[] = [];
  try {
    while (failures.length === 0) {
      while (free.length === 0 && failures.length === 0) await Promise.race(outstanding);
      if (failures.length > 0) break;
      const buffer = free.pop()!;
      const read = next(buffer);
      if (!read) {
        free.push(buffer);
        break;
      }
      const { bytesRead } = await handle.read(buffer, 0, read.length, read.position);
      const verdict = after(bytesRead, read.length, buffer);
      if (verdict === "stop") {
        free.push(buffer);
        break;
      }
      const consumed: Promise<void> = consume(buffer.subarray(0, verdict === "use" ? bytesRead : read.length)).then(
        () => {
          free.push(buffer);
          outstanding.delete(consumed);
        },
        (error: unknown) => {
          failures.push(error);
          outstanding.delete(consumed);
        },
      );
      outstanding.add(consumed);
    }
    await Promise.all(outstanding);
  } finally {
    await handle.close();
  }
  if (failures.length > 0) throw failures[0];
  return true;
}

export async function readSmallLocalFile(file: string, maxBytes: number): Promise<SmallFileRead> {
  const handle = await openIfExists(file);
  if (!handle) return { state: "absent" };
  try {
    const { size } = await handle.stat();
    if (size > maxBytes) return { state: "too-large", size };
    const content = Buffer.allocUnsafe(size);
    let filled = 0;
    while (filled < size) {
      const { bytesRead } = await handle.read(content, filled, size - filled, filled);
      if (bytesRead === 0) break; // truncated meanwhile
      filled += bytesRead;
    }
    return { state: "read", content: filled === size ? content : content.subarray(0, filled) };
  } finally {
    await handle.close();
  }
}

/** Creates a file that must not exist yet (O_EXCL, never a symlink), owned by the PostgreSQL user; its directory must exist. */
export async function writeNewFile(
  file: string,
  content: string | Buffer,
  options: { mode: number; identity: OsIdentity | null },
): Promise<void> {
  await createOwnedFile(file, content, { mode: options.mode, owner: options.identity });
}

/**
 * Temp file + fsync + rename + fsync of the directory (publishDurably), so
 * a reader never sees half a file and a crash never loses one Relevo has
 * acted on (a fence marker, standby.signal, a restored copy's settings);
 * owned by the PostgreSQL user. The temporary name is one nobody can guess
 * nor share: two writes of one file at once each write their own, and the
 * last rename wins whole.
 */
export async function writeFileAtomic(
  file: string,
  content: string | Buffer,
  options: { mode: number; identity: OsIdentity | null },
): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  // The temp name is in a directory the PostgreSQL user writes: created new, never through a symlink (see owned-files).
  const temp = temporaryNameFor(file);
  const handle = await openOwnedTemp(temp, { mode: options.mode, owner: options.identity });
  try {
    await handle.writeFile(content);
  } catch (error) {
    await handle.close().catch(() => undefined);
    await rm(temp, { force: true });
    throw error;
  }
  await publishDurably(handle, temp, file);
}

export async function listTree(root: string, relativeDir: string): Promise<FileEntry[]> {
  const start = resolveInside(root, relativeDir);
  const result: FileEntry[] = [];
  const walk = async (dir: string): Promise<void> => {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ENOTDIR") return;
      throw error;
    }
    names.sort();
    // One directory's entries stat'ed at once: a data directory has a thousand files or more.
    const infos = await Promise.all(names.map((name) => lstat(path.join(dir, name)).catch(() => null)));
    for (const [index, name] of names.entries()) {
      const full = path.join(dir, name);
      const info = infos[index];
      if (!info) continue; // removed while we walked (temp files, WAL recycling)
      const type = info.isSymbolicLink() ? "symlink" : info.isDirectory() ? "directory" : "file";
      result.push({ path: path.relative(root, full).split(path.sep).join("/"), type, size: info.size, mtimeMs: info.mtimeMs });
      if (type === "directory") await walk(full);
    }
  };
  await walk(start);
  return result;
}

export async function removeInside(root: string, relativePaths: readonly string[]): Promise<void> {
  for (const relativePath of relativePaths) {
    await rm(resolveInside(root, relativePath), { recursive: true, force: true });
  }
}

export async function openOptionalReadStream(file: string): Promise<Readable | null> {
  const handle = await openIfExists(file);
  // 1 MiB reads: with the default 64 KiB, per-chunk overhead halves a backup's throughput.
  return handle?.createReadStream({ highWaterMark: 1024 * 1024 }) ?? null;
}

/** Stream to a temp file, then (durable) publishDurably or (not) a plain rename: a reader never sees half a file. */
export async function writeStreamAtomic(
  file: string,
  source: AsyncIterable<Buffer>,
  options: { mode: number; identity: OsIdentity | null; durable: boolean },
): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const temp = temporaryNameFor(file);
  const handle = await openOwnedTemp(temp, { mode: options.mode, owner: options.identity });
  try {
    let position = 0;
    for await (const chunk of source) {
      let done = 0;
      while (done < chunk.length) done += (await handle.write(chunk, done, chunk.length - done, position + done)).bytesWritten;
      position += chunk.length;
    }
    if (!options.durable) {
      await handle.close();
      await rename(temp, file);
      return;
    }
  } catch (error) {
    await handle.close().catch(() => undefined);
    await rm(temp, { force: true });
    throw error;
  }
  await publishDurably(handle, temp, file);
}

/** mkdir -p, every created level owned by the PostgreSQL user. */
export async function makeDirectoryOwned(
  root: string,
  relativePath: string,
  options: { mode: number; identity: OsIdentity | null },
): Promise<void> {
  let current = root;
  for (const part of relativePath.split("/").filter((p) => p && p !== ".")) {
    current = path.join(current, part);
    try {
      await mkdir(current, { mode: options.mode });
      // Swapped for a symlink since the mkdir: ELOOP, never a chown of the link's target.
      await chownNoFollow(current, options.identity);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
  }
}
