import { lstat, readdir, rename, rm, type FileHandle } from "node:fs/promises";
import { createOwnedFile, openOwnedTemp } from "../../util/owned-files";
import { publishDurably, temporaryNameFor } from "../../util/durable-file";
import { openGuardedDirectory, openRegularFile, type GuardedDirectory } from "../../util/guarded-directory";
import { removeEntry } from "../../util/guarded-removal";
import type { Readable } from "node:stream";
import path from "node:path";
import type { ByteRange, ChunkedReadOptions, FileEntry, SmallFileRead, WriteParents } from "../node-driver";
import type { OsIdentity } from "../os-user";

export { resolveInside } from "../data-paths";

/**
 * A file or directory below a node's folder, which the PostgreSQL OS user
 * owns: `anchor` is a directory root trusts (the data home's `nodes/`),
 * `below` the components from there, the last one the file itself. Every
 * function here walks them with guarded-directory, never through a symlink.
 */
export interface GuardedPath {
  readonly anchor: string;
  readonly below: readonly string[];
}

/** The directory holding `target`, opened through no symlink; null when it does not exist. */
function openParent(target: GuardedPath, options: { create?: { mode: number; owner: OsIdentity | null } } = {}) {
  return openGuardedDirectory(target.anchor, target.below.slice(0, -1), options);
}

function nameOf(target: GuardedPath): string {
  return target.below[target.below.length - 1]!;
}

/** Runs `use` on the directory holding `target` (created when `create` says so), then closes it; null when it is absent. */
async function inParent<T>(
  target: GuardedPath,
  use: (directory: GuardedDirectory, name: string) => Promise<T>,
  options: { create?: { mode: number; owner: OsIdentity | null } } = {},
): Promise<T | null> {
  const directory = await openParent(target, options);
  if (!directory) return null;
  try {
    return await use(directory, nameOf(target));
  } finally {
    await directory.close();
  }
}

/** Opens a regular file for reading, never through a symlink; null when it (or its directory) does not exist. */
async function openIfExists(target: GuardedPath): Promise<FileHandle | null> {
  return (await inParent(target, (directory, name) => openRegularFile(directory, name))) ?? null;
}

export async function readOptionalFile(target: GuardedPath): Promise<Buffer | null> {
  const handle = await openIfExists(target);
  if (!handle) return null;
  try {
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}

/** See NodeDriver.readChunks: a fixed set of buffers, reused. */
export async function readLocalChunks(
  file: GuardedPath,
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
  file: GuardedPath,
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
  file: GuardedPath,
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

export async function readSmallLocalFile(file: GuardedPath, maxBytes: number): Promise<SmallFileRead> {
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
  file: GuardedPath,
  content: string | Buffer,
  options: { mode: number; identity: OsIdentity | null },
): Promise<void> {
  const done = await inParent(file, (directory, name) =>
    createOwnedFile(directory.at(name), content, { mode: options.mode, owner: options.identity }).then(() => true),
  );
  if (!done) throw Object.assign(new Error(`ENOENT: no directory for ${file.below.join("/")}`), { code: "ENOENT" });
}

/** Missing directories on the way to a file written: made like makeDirectory's, 0700 and the PostgreSQL user's. */
function creatingParents(identity: OsIdentity | null): { create: { mode: number; owner: OsIdentity | null } } {
  return { create: { mode: 0o700, owner: identity } };
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
  file: GuardedPath,
  content: string | Buffer,
  options: { mode: number; identity: OsIdentity | null; parents?: WriteParents },
): Promise<void> {
  await replaceThroughTemp(file, { ...options, durable: true }, (handle) => handle.writeFile(content));
}

/**
 * What both writers share: a temp file beside `file`, filled by `fill`,
 * then published (durable) or renamed (not); removed if anything fails.
 * The temp name is in a directory the PostgreSQL user writes: created new,
 * never through a symlink, and owned by that user (see owned-files).
 */
async function replaceThroughTemp(
  file: GuardedPath,
  options: { mode: number; identity: OsIdentity | null; durable: boolean; parents?: WriteParents },
  fill: (handle: FileHandle) => Promise<void>,
): Promise<void> {
  const written = await inParent(
    file,
    async (directory, name) => {
      const temp = directory.at(temporaryNameFor(name));
      const handle = await openOwnedTemp(temp, { mode: options.mode, owner: options.identity });
      try {
        await fill(handle);
        if (!options.durable) {
          await handle.close();
          await rename(temp, directory.at(name));
          return true;
        }
      } catch (error) {
        await handle.close().catch(() => undefined);
        await rm(temp, { force: true });
        throw error;
      }
      await publishDurably(handle, temp, directory.at(name), directory.handle);
      return true;
    },
    options.parents === "existing" ? {} : creatingParents(options.identity),
  );
  if (written === null) throw Object.assign(new Error(`ENOENT: no directory for ${file.below.join("/")}`), { code: "ENOENT" });
}

/**
 * Every entry below `start` (a directory), by lstat: a symlink is listed as
 * one, never entered. `start` itself is opened through no symlink; the walk
 * below it goes by name from that handle (see guarded-directory).
 */
export async function listTree(start: GuardedPath, prefix: string): Promise<FileEntry[]> {
  const top = await openGuardedDirectory(start.anchor, start.below);
  if (!top) return [];
  const result: FileEntry[] = [];
  const walk = async (relative: string): Promise<void> => {
    const dir = relative ? top.at(relative) : top.at(".");
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
      const info = infos[index];
      if (!info) continue; // removed while we walked (temp files, WAL recycling)
      const entry = relative ? `${relative}/${name}` : name;
      const type = info.isSymbolicLink() ? "symlink" : info.isDirectory() ? "directory" : "file";
      result.push({ path: prefix ? `${prefix}/${entry}` : entry, type, size: info.size, mtimeMs: info.mtimeMs });
      if (type === "directory") await walk(entry);
    }
  };
  try {
    await walk("");
  } finally {
    await top.close();
  }
  return result;
}

/**
 * Removes each (recursively), the directories on the way opened through no
 * symlink; an absent one is no error. Not Node's rm: it walks below by name
 * (see guarded-removal, which walks through handles).
 */
export async function removeInside(targets: readonly GuardedPath[]): Promise<void> {
  for (const target of targets) await inParent(target, removeEntry);
}

export async function openOptionalReadStream(file: GuardedPath): Promise<Readable | null> {
  const handle = await openIfExists(file);
  // 1 MiB reads: with the default 64 KiB, per-chunk overhead halves a backup's throughput.
  return handle?.createReadStream({ highWaterMark: 1024 * 1024 }) ?? null;
}

/** Stream to a temp file, then (durable) publishDurably or (not) a plain rename: a reader never sees half a file. */
export async function writeStreamAtomic(
  file: GuardedPath,
  source: AsyncIterable<Buffer>,
  options: { mode: number; identity: OsIdentity | null; durable: boolean; parents?: WriteParents },
): Promise<void> {
  await replaceThroughTemp(file, options, async (handle) => {
    let position = 0;
    for await (const chunk of source) {
      let done = 0;
      while (done < chunk.length) done += (await handle.write(chunk, done, chunk.length - done, position + done)).bytesWritten;
      position += chunk.length;
    }
  });
}

/** mkdir -p, every level created owned by the PostgreSQL user, none followed through a symlink. */
export async function makeDirectoryOwned(target: GuardedPath, options: { mode: number; identity: OsIdentity | null }): Promise<void> {
  const directory = await openGuardedDirectory(target.anchor, target.below, { create: { mode: options.mode, owner: options.identity } });
  await directory?.close();
}
