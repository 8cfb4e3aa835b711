import { createWriteStream } from "node:fs";
import { chown, lstat, mkdir, open, readFile, readdir, rename, rm, writeFile } from "node:fs/promises";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import path from "node:path";
import { ErrorCode, RelevoError } from "../../errors";
import type { FileEntry } from "../node-driver";
import type { OsIdentity } from "./os-user";

/** Resolves a path under a data directory, refusing anything that escapes it. */
export function resolveInside(root: string, relativePath: string): string {
  const resolved = path.resolve(root, relativePath);
  if (resolved !== root && !resolved.startsWith(root + path.sep)) {
    throw new RelevoError(ErrorCode.BadUserInput, `path ${relativePath} is outside the data directory`);
  }
  return resolved;
}

export async function readOptionalFile(file: string): Promise<Buffer | null> {
  try {
    return await readFile(file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
}

/** Temp file + rename, so a reader never sees half a file; owned by the PostgreSQL user. */
export async function writeFileAtomic(
  file: string,
  content: string | Buffer,
  options: { mode: number; identity: OsIdentity | null },
): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const temp = `${file}.relevo-tmp-${process.pid}`;
  await writeFile(temp, content, { mode: options.mode });
  if (options.identity) await chown(temp, options.identity.uid, options.identity.gid);
  await rename(temp, file);
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
    for (const name of names.sort()) {
      const full = path.join(dir, name);
      let info;
      try {
        info = await lstat(full);
      } catch {
        continue; // removed while we walked (temp files, WAL recycling)
      }
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
  try {
    const handle = await open(file, "r");
    // 1 MiB reads: with the default 64 KiB, per-chunk overhead halves a backup's throughput.
    return handle.createReadStream({ highWaterMark: 1024 * 1024 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
}

/** Stream to a temp file, fsync, rename: a reader never sees half a file. */
export async function writeStreamAtomic(file: string, source: Readable, options: { mode: number; identity: OsIdentity | null; durable: boolean }): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const temp = `${file}.relevo-tmp-${process.pid}`;
  try {
    await pipeline(source, createWriteStream(temp, { mode: options.mode }));
    if (options.durable) {
      const handle = await open(temp, "r+");
      await handle.sync();
      await handle.close();
    }
    if (options.identity) await chown(temp, options.identity.uid, options.identity.gid);
    await rename(temp, file);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

/** mkdir -p, every created level owned by the PostgreSQL user. */
export async function makeDirectoryOwned(root: string, relativePath: string, options: { mode: number; identity: OsIdentity | null }): Promise<void> {
  let current = root;
  for (const part of relativePath.split("/").filter((p) => p && p !== ".")) {
    current = path.join(current, part);
    try {
      await mkdir(current, { mode: options.mode });
      if (options.identity) await chown(current, options.identity.uid, options.identity.gid);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
  }
}
