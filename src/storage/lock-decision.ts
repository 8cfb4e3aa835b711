/**
 * What a process that wants a lock does about the one it found: pure, so
 * each rule is unit-tested without processes or files (see file-lock.ts for
 * the I/O).
 */

/** Every how often a holder touches its lock file (mtime) while it holds it. */
export const LOCK_REFRESH_MS = 10_000;
/** A holder on another host that has not touched its lock for this many refresh intervals is gone. */
export const REMOTE_HOLDER_SILENT_INTERVALS = 3;
/** A breaker file (`<lock>.break`) older than this was left by a breaker that crashed: breaking takes milliseconds. */
export const STALE_BREAKER_MS = 10_000;

/** What is known about the lock file found, as seen by the process that wants it. */
export interface HeldLockObservation {
  /** The holder's host is this one: its process can be checked. */
  readonly sameHost: boolean;
  /** Same host only: whether the holder's process (pid and start time) still runs. */
  readonly processAlive: boolean;
  /**
   * How long this process has seen the lock file unchanged (same holder,
   * same mtime), on its own clock: another host's clock is never compared
   * with this one's.
   */
  readonly unchangedForMs: number;
  /** How often the holder said it refreshes its lock (older lock files: LOCK_REFRESH_MS). */
  readonly holderRefreshMs: number;
  /** How long this process has waited for the lock so far. */
  readonly waitedMs: number;
  /** How long it may wait in all (0: try once). */
  readonly waitMs: number;
}

export type HeldLockDecision = "break" | "wait" | "give-up";

/** The lock file as this process last saw it, and since when (its own clock). */
export interface LockSighting {
  readonly token: string;
  readonly mtimeMs: number;
  readonly sinceMs: number;
}

/**
 * This sighting of a held lock, given the one before (kept across attempts
 * by the same process): the same holder with an untouched file keeps its
 * first-seen time, so a taker that tries once per run (expiry, waitMs 0)
 * still sees a dead remote holder's lock stay untouched across runs and
 * breaks it. Pure.
 */
export function nextSighting(previous: LockSighting | undefined, found: { token: string; mtimeMs: number }, now: number): LockSighting {
  if (previous && previous.token === found.token && previous.mtimeMs === found.mtimeMs) return previous;
  return { token: found.token, mtimeMs: found.mtimeMs, sinceMs: now };
}

/**
 * Which host a process runs on, as far as its pids mean anything: the host
 * name, the kernel's boot id and the pid namespace. Two containers with one
 * hostname (compose's hostname:, network_mode: host) share the name but not
 * the pid namespace; a host rebooted keeps its name but not its boot id.
 * Either way a pid from there means nothing here.
 */
export interface HostIdentity {
  readonly host: string;
  /** `<boot id>/<pid namespace>`; absent in lock files written before it was recorded. */
  readonly hostId?: string;
}

/** Whether the holder's pid can be checked from here: same host name, boot and pid namespace. Pure. */
export function holderOnThisHost(me: Required<HostIdentity>, holder: HostIdentity): boolean {
  // A holder that did not record its host id is judged by its refreshes, as on another host: never a pid
  // checked in a namespace it may not be in.
  return holder.host === me.host && holder.hostId === me.hostId;
}

export function decideOnHeldLock(observation: HeldLockObservation): HeldLockDecision {
  if (holderGone(observation)) return "break";
  return observation.waitedMs >= observation.waitMs ? "give-up" : "wait";
}

function holderGone(observation: HeldLockObservation): boolean {
  if (observation.sameHost) return !observation.processAlive;
  // A host that crashed (or lost the repository) stops refreshing; one that runs refreshes every holderRefreshMs.
  return observation.unchangedForMs > REMOTE_HOLDER_SILENT_INTERVALS * observation.holderRefreshMs;
}

/** Whether a breaker file this old is a crashed breaker's, to be removed. */
export function breakerIsStale(ageMs: number): boolean {
  return ageMs > STALE_BREAKER_MS;
}
