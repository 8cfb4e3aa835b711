import { constants } from "node:fs";
import { open, rm, type FileHandle } from "node:fs/promises";

/**
 * Files and directories Relevo (maybe root) makes for the PostgreSQL OS user
 * inside directories that user can write: a data directory, the archive's
 * wal/. Whoever runs as that user (a database superuser's `COPY … TO
 * PROGRAM`) can swap a name there for a symlink at any moment, so root
 * never opens by path to write, nor chowns by path: a chown by path after
 * creating a file follows a symlink put there in between and hands, say,
 * /etc/shadow to the postgres user. Instead the file is created with
 * O_EXCL | O_NOFOLLOW (it must be new, and never a link) and chowned
 * through its handle (fchown), which names the inode opened, whatever its
 * name points to since. Every chown in src/ goes through here.
 */

/** Who a file is made for; null: the process's own user (nothing to chown). */
export type FileOwner = { readonly uid: number; readonly gid: number } | null;

const CREATE_NEW = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/** Creates `file`, which must not exist (EEXIST otherwise, a symlink included), with `content`, owned by `owner`. */
export async function createOwnedFile(file: string, content: string | Buffer, options: { mode: number; owner: FileOwner }): Promise<void> {
  const handle = await open(file, CREATE_NEW, options.mode);
  try {
    await handle.writeFile(content);
    if (options.owner) await handle.chown(options.owner.uid, options.owner.gid);
  } finally {
    await handle.close();
  }
}

/**
 * Opens a temporary file for writing, new and owned by `owner`: whatever
 * stood at its name (a leftover, or a symlink) is removed first, and a name
 * taken again meanwhile is EEXIST, never followed. Callers pass a name of
 * their own (random), so no other writer shares it.
 */
export async function openOwnedTemp(file: string, options: { mode: number; owner: FileOwner }): Promise<FileHandle> {
  await rm(file, { force: true });
  const handle = await open(file, CREATE_NEW, options.mode);
  try {
    if (options.owner) await handle.chown(options.owner.uid, options.owner.gid);
  } catch (error) {
    await handle.close();
    throw error;
  }
  return handle;
}

/** Gives an existing file or directory to `owner` without following a symlink at its name (ELOOP then). */
export async function chownNoFollow(target: string, owner: FileOwner): Promise<void> {
  if (!owner) return;
  const handle = await open(target, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    await handle.chown(owner.uid, owner.gid);
  } finally {
    await handle.close();
  }
}
