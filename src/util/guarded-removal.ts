import { constants } from "node:fs";
import { open, readdir, rmdir, unlink } from "node:fs/promises";
import path from "node:path";
import { ErrorCode, RelevoError } from "../errors";
import { guardedHandle, openGuardedDirectory, type GuardedDirectory } from "./guarded-directory";

/**
 * Recursive removal, as root, below a directory another user can write (a
 * node's folder, a Docker bind mount the container's user writes). Node's
 * `rm -r` checks and acts by name: between its lstat of a directory and its
 * readdir, that user can rename the directory away and put a symlink in its
 * place, and root then lists and unlinks the link target's files (review 13,
 * H1). Here every step is relative to a handle held open instead
 * (`/proc/self/fd/<fd>/<name>`, as in guarded-directory):
 *
 * - `unlink` first: it removes a file or a symlink itself and never follows
 *   one; a directory fails with EISDIR;
 * - a directory is opened with O_DIRECTORY | O_NOFOLLOW (a symlink put there
 *   meanwhile: ELOOP, and the name is tried again), and its entries are
 *   listed and removed through that handle, whatever its name points to by
 *   then;
 * - `rmdir` of the name last: it never follows a link, and removes only an
 *   empty directory.
 *
 * So root lists and removes only entries of directories it reached through
 * no link: those of the tree, or of a directory of it the other user moved
 * away (its own). Why not `rm -rf` run as the PostgreSQL user: that user
 * cannot unlink what sits in a root-owned directory (the node's folder in
 * root's `nodes/`, a directory root or an operator made), so it would not
 * remove all that this removed before; and a Docker bind mount's owner is a
 * uid of the container, not always one this host can run as. This needs no
 * process per signal file either.
 */

/** A tree deeper than this is no PostgreSQL data directory: refused, so that one cannot make root hold a handle per level without end. */
const MAX_DEPTH = 128;
/** Tries at one name changed under the removal (refilled, swapped for a link) before giving up. */
const ATTEMPTS = 5;
/** Unlinks in flight at once: enough to keep libuv's threads busy. */
const UNLINK_BATCH = 64;

const OPEN_DIRECTORY = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;

function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException).code;
}

/** Runs `step`; a failure whose errno is one of `expected` is returned as that errno, others are thrown. */
async function tolerating(step: Promise<unknown>, expected: readonly string[]): Promise<string | null> {
  try {
    await step;
    return null;
  } catch (error) {
    const code = errnoOf(error);
    if (code && expected.includes(code)) return code;
    throw error;
  }
}

/**
 * Removes `name` in `directory`, and everything below it if it is a
 * directory, acting through handles only (see above); absent: nothing to do.
 */
export async function removeEntry(directory: GuardedDirectory, name: string): Promise<void> {
  await removeAt(directory, name, 0);
}

async function removeAt(directory: GuardedDirectory, name: string, depth: number): Promise<void> {
  const shown = path.join(directory.shown, name);
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    const unlinked = await tolerating(unlink(directory.at(name)), ["ENOENT", "EISDIR"]);
    if (unlinked === null || unlinked === "ENOENT") return;
    // A directory (Linux's unlink says EISDIR).
    let opened: GuardedDirectory;
    try {
      opened = guardedHandle(await open(directory.at(name), OPEN_DIRECTORY), shown);
    } catch (error) {
      const code = errnoOf(error);
      if (code === "ENOENT") return;
      // Swapped for a link or a file since the unlink: its name is tried again, and the link itself removed.
      if (code === "ELOOP" || code === "ENOTDIR") continue;
      throw error;
    }
    try {
      if (depth >= MAX_DEPTH) {
        throw new RelevoError(
          ErrorCode.DataDirNotOurs,
          `${shown} is more than ${MAX_DEPTH} directories deep: no PostgreSQL data directory is; Relevo stops removing there, remove it by hand`,
          { details: { path: shown } },
        );
      }
      await removeEntries(opened, await readdir(opened.at(".")), depth + 1);
    } finally {
      await opened.close();
    }
    // ENOTEMPTY: refilled meanwhile; ENOTDIR: a link or a file there now. Either way its name is tried again.
    const removed = await tolerating(rmdir(directory.at(name)), ["ENOENT", "ENOTEMPTY", "EEXIST", "ENOTDIR"]);
    if (removed === null || removed === "ENOENT") return;
  }
  throw new RelevoError(
    ErrorCode.PreconditionFailed,
    `${shown} changed under its removal ${ATTEMPTS} times (refilled, or swapped for a link): is a server still running on it? ` +
      `Stop what writes there and try again`,
    { details: { path: shown } },
  );
}

/**
 * A directory's entries: files and links unlinked a batch at a time (a data
 * directory holds thousands: one by one, that was 15 times slower than
 * Node's rm), then the directories among them one at a time, so that root
 * holds one handle per level, never one per entry.
 */
async function removeEntries(directory: GuardedDirectory, names: readonly string[], depth: number): Promise<void> {
  const directories: string[] = [];
  for (let start = 0; start < names.length; start += UNLINK_BATCH) {
    await Promise.all(
      names.slice(start, start + UNLINK_BATCH).map(async (name) => {
        if ((await tolerating(unlink(directory.at(name)), ["ENOENT", "EISDIR"])) === "EISDIR") directories.push(name);
      }),
    );
  }
  for (const name of directories) await removeAt(directory, name, depth);
}

/**
 * Removes `below`'s last component (recursively) under `anchor`, a directory
 * root trusts: the directories on the way are opened through no symlink
 * (openGuardedDirectory; a link on the way is refused), the removal is
 * removeEntry's. An absent one, or an absent directory on the way, is no error.
 */
export async function removeGuarded(target: { readonly anchor: string; readonly below: readonly string[] }): Promise<void> {
  const name = target.below[target.below.length - 1];
  if (!name || name === "." || name === ".." || name.includes("/")) throw new Error(`not a path component: "${name ?? ""}"`);
  const directory = await openGuardedDirectory(target.anchor, target.below.slice(0, -1));
  if (!directory) return;
  try {
    await removeEntry(directory, name);
  } finally {
    await directory.close();
  }
}
