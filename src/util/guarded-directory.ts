import { constants } from "node:fs";
import { open, readdir, type FileHandle } from "node:fs/promises";
import path from "node:path";
import { ErrorCode, RelevoError } from "../errors";
import { makeDirectoryDurably } from "./durable-file";
import type { FileOwner } from "./owned-files";

/**
 * Root's file work below a directory the PostgreSQL OS user controls. That
 * user owns a local node's folder (`nodes/<name>`) and the repository's WAL
 * archive (`wal/`, where pg_receivewal writes as that user): it can replace
 * `data`, `wal/diverged`, or any directory on the way to a file, by a
 * symlink at any moment, and O_NOFOLLOW covers only a path's last
 * component. So no path there is resolved by name from the top: the walk
 * starts at an anchor root trusts (the data home's `nodes/`, the
 * repository's root, both root's), then opens each component below it
 * with O_DIRECTORY | O_NOFOLLOW *relative to the handle of the one above*,
 * and the file work happens relative to the last handle.
 *
 * Node has no openat(2); Linux's /proc/self/fd/<fd> stands in for it: a
 * path through it starts at the very directory the handle holds (the magic
 * link is not resolved by name), whatever the names above point to since.
 * So each step is the openat the kernel would do: no check-then-use window
 * for the directories walked, and a symlink anywhere on the way is refused
 * (ELOOP), never followed. A recursive removal goes on through handles too
 * (guarded-removal). What remains (docs/security.md): a listing's walk into
 * subdirectories goes on by name below the handle; a file hard-linked into such a directory is a file there (the
 * kernel's fs.protected_hardlinks, on by default, keeps that user from
 * linking files it cannot write).
 */
export interface GuardedDirectory {
  /** The directory's path as configured, for messages only: never opened by it. */
  readonly shown: string;
  readonly handle: FileHandle;
  /** A path naming `name` in the directory held open, resolved from the handle rather than from any name above it. */
  at(name: string): string;
  close(): Promise<void>;
}

const OPEN_DIRECTORY = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;

/** A symlink (or something other than a directory or file) where Relevo works as root: refused, never followed. */
function linkRefused(shown: string, expected: "directory" | "regular file", cause: unknown): RelevoError {
  return new RelevoError(
    ErrorCode.DataDirNotOurs,
    `${shown} is a symlink or not a ${expected}: ` +
      `Relevo, running as root, never follows a link in a directory the PostgreSQL OS user can write`,
    { cause, details: { path: shown } },
  );
}

/** A directory handle as a GuardedDirectory: `shown` names it in messages only. */
export function guardedHandle(handle: FileHandle, shown: string): GuardedDirectory {
  return {
    shown,
    handle,
    at: (name) => `/proc/self/fd/${handle.fd}/${name}`,
    close: () => handle.close(),
  };
}

/**
 * Opens `anchor` (trusted: followed like any path root owns), then each of
 * `below` from it, never through a symlink. An absent component: null, or,
 * with `create`, made (owned by `create.owner`, through its handle).
 */
export async function openGuardedDirectory(
  anchor: string,
  below: readonly string[],
  options: { create?: { mode: number; owner: FileOwner } } = {},
): Promise<GuardedDirectory | null> {
  let top: GuardedDirectory;
  try {
    top = guardedHandle(await open(anchor, constants.O_RDONLY | constants.O_DIRECTORY), anchor);
  } catch (error) {
    // Nothing below an absent anchor (no node made yet); one to make things in must exist.
    if ((error as NodeJS.ErrnoException).code === "ENOENT" && !options.create) return null;
    throw error;
  }
  if (below.length === 0) return top;
  try {
    return await openGuardedBelow(top, below, options);
  } finally {
    await top.close();
  }
}

/**
 * Opens each of `below` (one at least) from `start`, a directory already
 * held, never through a symlink, as openGuardedDirectory does from its
 * anchor; `start` stays open (the caller's). An absent component: null, or,
 * with `create`, made.
 */
export async function openGuardedBelow(
  start: GuardedDirectory,
  below: readonly string[],
  options: { create?: { mode: number; owner: FileOwner } } = {},
): Promise<GuardedDirectory | null> {
  let current: GuardedDirectory | null = null;
  try {
    for (const part of below) {
      assertEntryName(part);
      const parent: GuardedDirectory = current ?? start;
      const next = await openComponent(parent, part, path.join(parent.shown, part), options.create);
      await current?.close();
      current = next;
      if (!next) return null;
    }
    if (!current) throw new Error("openGuardedBelow: no component to open");
    return current;
  } catch (error) {
    await current?.close().catch(() => undefined);
    throw error;
  }
}

/**
 * A name of one entry in a directory held open: at(name) resolves it from
 * the handle, so "..", "." or a "/" would leave that directory (or name
 * the directory itself). Every name a caller passes is checked here.
 */
export function assertEntryName(name: string): void {
  if (!name || name === "." || name === ".." || name.includes("/") || name.includes("\0"))
    throw new Error(`not a path component: "${name}"`);
}

/** The names in a directory held open (readdir of the handle, not of any name above it). */
export function listEntryNames(directory: GuardedDirectory): Promise<string[]> {
  return readdir(`/proc/self/fd/${directory.handle.fd}`);
}

async function openComponent(
  parent: GuardedDirectory,
  part: string,
  shown: string,
  create: { mode: number; owner: FileOwner } | undefined,
): Promise<GuardedDirectory | null> {
  let made = false;
  for (;;) {
    let opened: GuardedDirectory;
    try {
      opened = guardedHandle(await open(parent.at(part), OPEN_DIRECTORY), shown);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "ELOOP" || code === "ENOTDIR") throw linkRefused(shown, "directory", error);
      if (code !== "ENOENT") throw error;
      if (!create || made) return null;
      // mkdir never follows a symlink at its name (EEXIST): made, or raced by another maker, it is opened again. Its
      // entry is flushed in the parent: a durable file published into it must not lose its directory in a crash.
      await makeDirectoryDurably(parent.at(part), { mode: create.mode, parent: parent.handle });
      made = true;
      continue;
    }
    // Given away through the handle: what was opened, whatever its name points to since.
    if (made && create?.owner)
      await opened.handle.chown(create.owner.uid, create.owner.gid).catch(async (error: unknown) => {
        await opened.close();
        throw error;
      });
    return opened;
  }
}

/**
 * Opens `name` in `directory` to read: never through a symlink (O_NOFOLLOW)
 * and only a regular file (fstat of what was opened: not a FIFO that would
 * block, nor a device). null: absent.
 */
export async function openRegularFile(directory: GuardedDirectory, name: string): Promise<FileHandle | null> {
  assertEntryName(name);
  const shown = path.join(directory.shown, name);
  let handle: FileHandle;
  try {
    handle = await open(directory.at(name), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return null;
    if (code === "ELOOP") throw linkRefused(shown, "regular file", error);
    throw error;
  }
  const info = await handle.stat().catch(async (error: unknown) => {
    await handle.close();
    throw error;
  });
  if (!info.isFile()) {
    await handle.close();
    throw linkRefused(shown, "regular file", new Error(`fstat: mode ${info.mode.toString(8)}`));
  }
  return handle;
}

/** The content of the regular file `name` in `directory` (see openRegularFile); null: absent. */
export async function readRegularFile(
  directory: GuardedDirectory,
  name: string,
  options: { maxBytes?: number } = {},
): Promise<Buffer | null> {
  const handle = await openRegularFile(directory, name);
  if (!handle) return null;
  try {
    if (options.maxBytes === undefined) return await handle.readFile();
    const buffer = Buffer.alloc(options.maxBytes);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}
