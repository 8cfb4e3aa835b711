import { randomBytes } from "node:crypto";
import { link, readFile, readlink, stat, unlink, utimes, writeFile } from "node:fs/promises";
import os from "node:os";
import { ErrorCode, RelevoError } from "../errors";
import { sleep } from "../util/sleep";
import {
  LOCK_REFRESH_MS,
  breakerIsStale,
  decideOnHeldLock,
  holderOnThisHost,
  nextSighting,
  type HostIdentity,
  type LockSighting,
} from "./lock-decision";

/**
 * A lock that is a file, held across processes and hosts sharing a
 * directory, taken as PostgreSQL takes postmaster.pid: the file is created
 * only if it does not exist — written under a temporary name first, then
 * link(2)ed into place, which fails when the name is taken, so a lock file is
 * never seen half written — and names its holder: host, pid and the
 * process's start time (a pid reused by another process does not look
 * alive). A holder that crashed leaves its file behind; the next process that
 * wants the lock finds that process gone and breaks it, so a crash never
 * leaves the lock held. A holder on another host cannot be checked from
 * here: it touches its file (mtime) every refresh interval while it holds
 * it, and is judged gone once the file stays untouched for three intervals.
 */

/** Who holds a lock: the content of its file. */
export interface LockHolder extends HostIdentity {
  readonly host: string;
  readonly pid: number;
  /** The holder process's start time (clock ticks after boot, /proc/<pid>/stat), "" when unknown. */
  readonly processStart: string;
  /** What it holds the lock for ("verification", "restore into copy1", …). */
  readonly purpose: string;
  readonly since: string;
  /** Unique per acquisition: a release removes its own lock only. */
  readonly token: string;
  /** How often the holder touches the file; absent in lock files written before it did (LOCK_REFRESH_MS). */
  readonly refreshMs?: number;
}

export interface FileLockOptions {
  readonly purpose: string;
  /** How long to wait for another holder in all; 0 tries once. Past it, LOCK_HELD naming the file and holder. */
  readonly waitMs: number;
  /** Called once, when this has to wait, with who holds the lock. */
  readonly onWait?: (holder: LockHolder) => void;
  readonly pollMs?: number;
  /** How often this holder touches its file (default LOCK_REFRESH_MS). */
  readonly refreshMs?: number;
}

export interface HeldFileLock {
  readonly file: string;
  readonly token: string;
  release(): Promise<void>;
}

/** Takes the lock file `file`, waiting up to `options.waitMs` while a live holder has it. */
export async function acquireFileLock(file: string, options: FileLockOptions): Promise<HeldFileLock> {
  const here = await thisHost();
  const me: LockHolder = {
    ...here,
    pid: process.pid,
    processStart: await processStart(process.pid),
    purpose: options.purpose,
    since: new Date().toISOString(),
    token: randomBytes(8).toString("hex"),
    refreshMs: options.refreshMs ?? LOCK_REFRESH_MS,
  };
  const started = Date.now();
  let announced = false;
  for (;;) {
    if (await createLockFile(file, me)) {
      sightings.delete(file);
      return holdLock(file, me);
    }
    const found = await readLockFile(file);
    if (found === null) continue; // released meanwhile
    const now = Date.now();
    const seen = nextSighting(sightings.get(file), { token: found.holder.token, mtimeMs: found.mtimeMs }, now);
    sightings.set(file, seen);
    const sameHost = holderOnThisHost(here, found.holder);
    const decision = decideOnHeldLock({
      sameHost,
      processAlive: sameHost && (await processAlive(found.holder)),
      unchangedForMs: now - seen.sinceMs,
      holderRefreshMs: found.holder.refreshMs ?? LOCK_REFRESH_MS,
      waitedMs: now - started,
      waitMs: options.waitMs,
    });
    switch (decision) {
      case "break":
        await breakLock(file, found.holder);
        continue;
      case "give-up":
        throw lockHeld(file, found.holder, options);
      case "wait":
        if (!announced) options.onWait?.(found.holder);
        announced = true;
        await sleep(Math.min(options.pollMs ?? 200, Math.max(1, options.waitMs - (now - started))));
        continue;
    }
  }
}

/**
 * Each held lock file as this process last saw it (see nextSighting), kept
 * across attempts: a dead remote holder is only ever found by watching its
 * file stay untouched, and a taker that tries once per run must be able to
 * do that across runs. One entry per lock file found held; dropped once this
 * process takes the lock.
 */
const sightings = new Map<string, LockSighting>();

/** This process's host identity (see HostIdentity); the boot id and pid namespace are "" without /proc. */
export async function thisHost(): Promise<Required<HostIdentity>> {
  const bootId = await readFile("/proc/sys/kernel/random/boot_id", "utf8").then(
    (text) => text.trim(),
    () => "",
  );
  const pidNamespace = await readlink("/proc/self/ns/pid").catch(() => "");
  return { host: os.hostname(), hostId: `${bootId}/${pidNamespace}` };
}

/** `work` while holding the lock file `file` (see acquireFileLock), released however `work` ends. */
export async function withFileLock<T>(file: string, options: FileLockOptions, work: () => Promise<T>): Promise<T> {
  const lock = await acquireFileLock(file, options);
  try {
    return await work();
  } finally {
    await lock.release();
  }
}

/** A process as a lock file names it: host, pid and start time (a reused pid is another process). */
export interface ProcessIdentity extends Required<HostIdentity> {
  readonly pid: number;
  readonly processStart: string;
}

/** This process, as ProcessIdentity. */
export async function thisProcess(): Promise<ProcessIdentity> {
  return { ...(await thisHost()), pid: process.pid, processStart: await processStart(process.pid) };
}

/**
 * Whether `owner` still runs. A process of another host (or pid namespace)
 * cannot be checked from here: it is taken to run.
 */
export async function processRuns(owner: ProcessIdentity): Promise<boolean> {
  if (!holderOnThisHost(await thisHost(), owner)) return true;
  return processAlive({ ...owner, purpose: "", since: "", token: "" });
}

/** Who holds the lock file now; null when nobody does. */
export async function lockHolder(file: string): Promise<LockHolder | null> {
  return (await readLockFile(file))?.holder ?? null;
}

function lockHeld(file: string, holder: LockHolder, options: FileLockOptions): RelevoError {
  const who = `pid ${holder.pid} on ${holder.host}, ${holder.purpose}, since ${holder.since}`;
  return new RelevoError(
    ErrorCode.LockHeld,
    `${options.purpose}: lock ${file} is held by ${who}` +
      (options.waitMs > 0 ? ` (waited ${Math.round(options.waitMs / 1000)} s)` : "") +
      `; retry once it is done (a holder gone for good is found dead and its lock broken by the next taker)`,
    { details: { lockFile: file, holder: { host: holder.host, pid: holder.pid, purpose: holder.purpose, since: holder.since } } },
  );
}

/** Held: the file's mtime is refreshed until release, which removes the file if it is still this holder's. */
function holdLock(file: string, me: LockHolder): HeldFileLock {
  const timer = setInterval(() => void refreshLock(file, me.token), me.refreshMs ?? LOCK_REFRESH_MS);
  timer.unref(); // a lock never keeps a process alive on its own
  let released = false;
  return {
    file,
    token: me.token,
    release: async () => {
      if (released) return;
      released = true;
      clearInterval(timer);
      await releaseLock(file, me.token);
    },
  };
}

async function refreshLock(file: string, token: string): Promise<void> {
  // Another host may have judged this holder gone and taken the lock: its file is never touched then.
  if ((await lockHolder(file).catch(() => null))?.token !== token) return;
  const now = new Date();
  await utimes(file, now, now).catch(() => undefined);
}

/** Creates the lock file with its content in one step; false when it exists. */
async function createLockFile(file: string, holder: LockHolder): Promise<boolean> {
  const temp = `${file}.${holder.token}.tmp`;
  await writeFile(temp, JSON.stringify(holder) + "\n", { mode: 0o600 });
  try {
    await link(temp, file);
    return true;
  } catch (error) {
    if (errno(error) === "EEXIST") return false;
    throw error;
  } finally {
    await unlink(temp).catch(() => undefined);
  }
}

async function readLockFile(file: string): Promise<{ holder: LockHolder; mtimeMs: number } | null> {
  let text: string;
  let mtimeMs: number;
  try {
    mtimeMs = (await stat(file)).mtimeMs;
    text = await readFile(file, "utf8");
  } catch (error) {
    if (errno(error) === "ENOENT") return null;
    throw error;
  }
  try {
    return { holder: JSON.parse(text) as LockHolder, mtimeMs };
  } catch {
    // Never written half (see createLockFile): a file that does not parse was not made by a holder.
    const holder = { ...(await thisHost()), pid: 0, processStart: "", purpose: "unreadable lock file", since: "", token: "" };
    return { holder, mtimeMs };
  }
}

/**
 * Removes a dead holder's lock, in a critical section of its own: the
 * breaker file `<lock>.break`, created exclusively. Under it the lock is
 * read again and removed only if it is still the dead holder's, so a breaker
 * that judged an old lock never touches a fresh one and the lock file never
 * goes missing while it is held. A breaker busy elsewhere means come back
 * later; one left by a breaker that crashed (older than STALE_BREAKER_MS,
 * breaking takes milliseconds) is removed.
 */
async function breakLock(file: string, dead: LockHolder): Promise<void> {
  const breaker = `${file}.break`;
  try {
    await writeFile(breaker, `${process.pid}\n`, { flag: "wx", mode: 0o600 });
  } catch (error) {
    if (errno(error) !== "EEXIST") throw error;
    const age = await stat(breaker).then(
      (found) => Date.now() - found.mtimeMs,
      () => null,
    );
    if (age !== null && breakerIsStale(age)) await unlink(breaker).catch(() => undefined);
    await sleep(5);
    return;
  }
  try {
    if ((await lockHolder(file))?.token === dead.token) await unlink(file).catch(ignoreMissing);
  } finally {
    await unlink(breaker).catch(() => undefined);
  }
}

async function releaseLock(file: string, token: string): Promise<void> {
  const holder = await lockHolder(file).catch(() => null);
  if (holder?.token === token) await unlink(file).catch(() => undefined);
}

/** Whether the holder's process (on this host) still runs: its pid, started when the lock file says. */
async function processAlive(holder: LockHolder): Promise<boolean> {
  if (!Number.isInteger(holder.pid) || holder.pid <= 0) return false;
  try {
    process.kill(holder.pid, 0);
  } catch (error) {
    if (errno(error) === "ESRCH") return false;
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
    return errno(error) === "ENOENT" ? ((await hasProc()) ? "dead" : "") : "";
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

function errno(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException).code;
}

function ignoreMissing(error: unknown): void {
  if (errno(error) !== "ENOENT") throw error;
}
