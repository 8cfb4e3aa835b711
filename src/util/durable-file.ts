import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { mkdir, open, readdir, rename, rm, unlink, type FileHandle } from "node:fs/promises";
import path from "node:path";

/**
 * A file Relevo acts on after a crash must be there after the crash: the
 * fence marker (a fenced node must never start as a primary again),
 * standby.signal, a restored copy's configuration, secrets.json (the
 * passwords the nodes were given). A rename is atomic but not durable: until
 * the file's data and then its directory are flushed, a power loss can leave
 * the old file, an empty one, or none. So: write a temporary file, fsync it,
 * rename it over the file, fsync the directory (the rename lives in the
 * directory's own data).
 */

/** fsync of a directory: makes the names created, renamed or removed in it durable. */
export async function syncDirectory(directory: string): Promise<void> {
  // O_NOFOLLOW: the directory may be one the PostgreSQL user can write a link into; fsync only reads, but never through a link.
  const handle = await open(directory, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * mkdir of one directory, its entry then flushed in its parent (through
 * `parent`, the caller's handle on it, when given): the rename of a file
 * published durably into it lives in the new directory's own data, and is
 * lost with the directory if a crash takes the directory's entry back. One
 * that exists already (another maker raced this one) has its parent
 * flushed too: its maker may not have done so yet. Returns whether this
 * call made it.
 */
export async function makeDirectoryDurably(directory: string, options: { mode: number; parent?: FileHandle }): Promise<boolean> {
  let made = true;
  await mkdir(directory, { mode: options.mode }).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== "EEXIST") throw error;
    made = false;
  });
  if (options.parent) await options.parent.sync();
  else await syncDirectory(path.dirname(directory));
  return made;
}

/**
 * `directory` and its missing parents (mkdir -p, with `mode`), each new
 * one's entry flushed in its parent, top down (see makeDirectoryDurably).
 * Nothing is flushed when nothing was made.
 */
export async function makeDirectoriesDurably(directory: string, options: { mode: number }): Promise<void> {
  const target = path.resolve(directory);
  const first = await mkdir(target, { recursive: true, mode: options.mode });
  if (first === undefined) return;
  const made = [path.resolve(first)];
  for (const part of path.relative(made[0]!, target).split(path.sep).filter(Boolean)) made.push(path.join(made.at(-1)!, part));
  for (const directory of made) await syncDirectory(path.dirname(directory));
}

/**
 * The last steps of a durable replace, for a caller that wrote `temp`
 * through `handle`: the data flushed, the handle closed, the temp renamed
 * over `file`, the directory flushed (through `directory`, the caller's
 * handle on it, when given: a path like /proc/self/fd/<fd>/name has no
 * directory name to open). The temp is removed if any step fails.
 */
export async function publishDurably(handle: FileHandle, temp: string, file: string, directory?: FileHandle): Promise<void> {
  try {
    await handle.sync();
    await handle.close();
    await rename(temp, file);
  } catch (error) {
    await handle.close().catch(() => undefined);
    await rm(temp, { force: true });
    throw error;
  }
  if (directory) await directory.sync();
  else await syncDirectory(path.dirname(file));
}

/** A temporary name beside `file` nobody else uses (two writers, or a leftover, never share one). */
export function temporaryNameFor(file: string): string {
  return `${file}.relevo-tmp-${process.pid}-${randomBytes(6).toString("hex")}`;
}

const TEMPORARY_NAME = /\.relevo-tmp-(\d+)-[0-9a-f]{12}$/;

/** The process that wrote a temporary file of temporaryNameFor, or null when `name` is not one. Pure. */
export function temporaryWriter(name: string): number | null {
  const match = TEMPORARY_NAME.exec(name);
  return match ? Number(match[1]) : null;
}

/**
 * Removes the temporary files a crash left in `directory` (between their
 * creation and their rename): `secrets.json`'s holds every password. Only
 * regular files (a link of that name is left alone; unlink would not follow
 * it anyway) of a writer that is gone: a live one (another relevo command)
 * is about to rename its own. Returns the names removed.
 */
export async function removeAbandonedTemporaries(directory: string): Promise<string[]> {
  const removed: string[] = [];
  for (const entry of await readdir(directory, { withFileTypes: true })) {
    const writer = temporaryWriter(entry.name);
    if (writer === null || !entry.isFile() || processAlive(writer)) continue;
    await unlink(path.join(directory, entry.name)).catch(() => undefined); // gone already: as wanted
    removed.push(entry.name);
  }
  return removed;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"; // alive, another user's
  }
}

/**
 * Replaces `file` (Relevo's own: secrets.json, members.json,
 * cluster-identity.json) with `content`, durably: see above. The temp is
 * created new (O_EXCL | O_NOFOLLOW) with `mode`, so nothing at its name is
 * followed or reused; `owner`: given to it before it takes the name.
 */
export async function replaceFileDurably(
  file: string,
  content: string | Buffer,
  options: { mode: number; owner?: { readonly uid: number; readonly gid: number } },
): Promise<void> {
  const temp = temporaryNameFor(file);
  const handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, options.mode);
  try {
    await handle.writeFile(content);
    // The mode asked for, whatever the umask took off at creation.
    await handle.chmod(options.mode);
    if (options.owner) await handle.chown(options.owner.uid, options.owner.gid);
  } catch (error) {
    await handle.close().catch(() => undefined);
    await rm(temp, { force: true });
    throw error;
  }
  await publishDurably(handle, temp, file);
}
