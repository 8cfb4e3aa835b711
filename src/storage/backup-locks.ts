import { randomBytes } from "node:crypto";
import { link, mkdir, readFile, rename, unlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { sleep } from "../util/sleep";

/**
 * Locks on the repository's backups, one file per backup under
 * `<repository>/locks/<id>.lock`, that hold across processes: the service
 * (verification, expiry, restores through the API) and the CLI (`relevo
 * restore`, which runs without the service) touch the same backups.
 *
 * Taken as PostgreSQL takes postmaster.pid: the file is created only if it
 * does not exist — written under a temporary name first, then link(2)ed
 * into place, which fails when the name is taken, so a lock file is never
 * seen half written — and names its holder: host, pid and the process's
 * start time (a pid reused by another process does not look alive). A holder
 * that crashed leaves its file behind; the next process that wants the lock
 * finds that process gone and breaks it, so a crash never leaves a backup
 * locked. A holder on another host (a repository shared over the network)
 * cannot be checked from here and is never judged dead.
 */

/** Who holds a lock: the content of its file. */
export interface LockHolder {
  readonly host: string;
  readonly pid: number;
  /** The holder process's start time (clock ticks after boot, /proc/<pid>/stat), "" when unknown. */
  readonly processStart: string;
  /** What it holds the lock for ("verify", "restore into copy1", …). */
  readonly purpose: string;
  readonly since: string;
  /** Unique per acquisition: a release removes its own lock only. */
  readonly token: string;
}

/** Locks held on some backups; release them once done (also by `await using`). */
export interface HeldBackupLocks extends AsyncDisposable {
  readonly ids: readonly string[];
  release(): Promise<void>;
}

export interface LockOptions {
  readonly purpose: string;
  /** Called once per lock this has to wait for, with who holds it. */
  readonly onWait?: (id: string, holder: LockHolder) => void;
  readonly pollMs?: number;
}

export class BackupLocks {
  readonly directory: string;

  constructor(repositoryRoot: string) {
    this.directory = path.join(repositoryRoot, "locks");
  }

  /**
   * Locks every backup of `ids`, waiting for each while another holder (in
   * this process or another) has it. Always taken in id order, so two
   * callers locking overlapping sets cannot deadlock.
   */
  async acquire(ids: readonly string[], options: LockOptions): Promise<HeldBackupLocks> {
    await mkdir(this.directory, { recursive: true, mode: 0o700 });
    const sorted = [...new Set(ids)].sort();
    const held: Array<{ file: string; token: string }> = [];
    const release = async (): Promise<void> => {
      for (const lock of held.splice(0).reverse()) await releaseLock(lock.file, lock.token);
    };
    try {
      for (const id of sorted) {
        const file = this.fileOf(id);
        held.push({ file, token: await acquireLock(file, id, options) });
      }
    } catch (error) {
      await release();
      throw error;
    }
    return { ids: sorted, release, [Symbol.asyncDispose]: release };
  }

  /** Who holds a backup's lock now; null when nobody does. */
  async holder(id: string): Promise<LockHolder | null> {
    return readHolder(this.fileOf(id));
  }

  private fileOf(id: string): string {
    // Ids are checked before they get here (Repository.backupDir); a path separator would still never make it a path.
    return path.join(this.directory, `${id.replace(/[^A-Za-z0-9-]/g, "_")}.lock`);
  }
}

async function acquireLock(file: string, id: string, options: LockOptions): Promise<string> {
  const me: LockHolder = {
    host: os.hostname(),
    pid: process.pid,
    processStart: await processStart(process.pid),
    purpose: options.purpose,
    since: new Date().toISOString(),
    token: randomBytes(8).toString("hex"),
  };
  let announced = false;
  for (;;) {
    if (await createLockFile(file, me)) return me.token;
    const holder = await readHolder(file);
    if (holder === null) continue; // released meanwhile
    if (!(await holderAlive(holder))) {
      await breakLock(file, holder);
      continue;
    }
    if (!announced) options.onWait?.(id, holder);
    announced = true;
    await sleep(options.pollMs ?? 200);
  }
}

/** Creates the lock file with its content in one step; false when it exists. */
async function createLockFile(file: string, holder: LockHolder): Promise<boolean> {
  const temp = `${file}.${holder.token}.tmp`;
  await writeFile(temp, JSON.stringify(holder) + "\n", { mode: 0o600 });
  try {
    await link(temp, file);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw error;
  } finally {
    await unlink(temp).catch(() => undefined);
  }
}

async function readHolder(file: string): Promise<LockHolder | null> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
  try {
    return JSON.parse(text) as LockHolder;
  } catch {
    // Never written half (see createLockFile): a file that does not parse was not made by a holder.
    return { host: os.hostname(), pid: 0, processStart: "", purpose: "unreadable lock file", since: "", token: "" };
  }
}

/**
 * Removes a dead holder's lock. Renamed aside first, then checked to be the
 * same lock (its token): if another process broke it and took the lock in
 * between, that fresh lock is put back.
 */
async function breakLock(file: string, dead: LockHolder): Promise<void> {
  const aside = `${file}.broken-${randomBytes(6).toString("hex")}`;
  try {
    await rename(file, aside);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw error;
  }
  const moved = await readHolder(aside);
  if (moved !== null && moved.token !== dead.token) await link(aside, file).catch(() => undefined);
  await unlink(aside).catch(() => undefined);
}

async function releaseLock(file: string, token: string): Promise<void> {
  const holder = await readHolder(file).catch(() => null);
  if (holder?.token === token) await unlink(file).catch(() => undefined);
}

/** Whether the holder's process still runs (one on another host is assumed to). */
async function holderAlive(holder: LockHolder): Promise<boolean> {
  if (holder.host !== os.hostname()) return true;
  if (!Number.isInteger(holder.pid) || holder.pid <= 0) return false;
  try {
    process.kill(holder.pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ESRCH") return false;
  }
  const start = await processStart(holder.pid);
  if (start === "dead") return false;
  return holder.processStart === "" || start === "" || start === holder.processStart;
}

/** Field 22 of /proc/<pid>/stat (start time after boot), "" without /proc, "dead" for a gone or zombie process. */
async function processStart(pid: number): Promise<string> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, "utf8");
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "ENOENT" ? ((await hasProc()) ? "dead" : "") : "";
  }
  // The command name is in parentheses and may hold spaces: count fields after the last ')'.
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  if (fields[0] === "Z" || fields[0] === "X") return "dead";
  return fields[19] ?? "";
}

async function hasProc(): Promise<boolean> {
  return readFile("/proc/self/stat", "utf8").then(
    () => true,
    () => false,
  );
}
