import { randomBytes } from "node:crypto";
import os from "node:os";
import type Redis from "ioredis";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import type { RedisKeys } from "../redis/keys";
import { redisCall } from "../redis/redis-client";
import { settlesWithin, sleep } from "../util/sleep";

/**
 * Locks on the repository's backups, one Redis key per backup
 * (`RedisKeys.backupLock`), since the service (verification, expiry,
 * restores through the API), other service instances and the CLI
 * (`relevo restore`) touch the same backups. Not in the repository: object
 * storage has no create-if-absent nor anything a holder could refresh, so
 * the lock lives where Relevo's leases live, and every process that uses
 * the repository reaches that Redis.
 *
 * A lock is a key set only where there is none (SET NX) holding its
 * holder (host, pid, purpose, since, and a token unique to the
 * acquisition), with a time to live its holder renews every third of it:
 * a holder that dies (SIGKILL, a host lost) frees its locks within one time
 * to live, with no judgement of pids or clocks of other hosts. Renewal and
 * release touch the key only while it still holds the holder's own value
 * (compare-and-extend, compare-and-delete), so a holder whose key lapsed
 * never removes the next holder's.
 */

/** Who holds a backup's lock: the value of its key. */
export interface LockHolder {
  readonly host: string;
  readonly pid: number;
  /** What it holds the lock for ("verification", "restore into copy1", …). */
  readonly purpose: string;
  readonly since: string;
  /** Unique per acquisition: only its holder renews or releases the lock. */
  readonly token: string;
}

/** Locks held on some backups; release them once done (also by `await using`). */
export interface HeldBackupLocks extends AsyncDisposable {
  readonly ids: readonly string[];
  /**
   * Aborted once one of the locks lapsed while held (Redis lost it, this
   * process stalled for longer than a time to live), its reason a
   * LOCK_LOST error: from then on an expiry may take the backup's content
   * and WAL away, so work that reads them (a restore, a verification)
   * stops on it rather than go on unprotected.
   */
  readonly lost: AbortSignal;
  release(): Promise<void>;
}

export interface LockOptions {
  readonly purpose: string;
  /** How long to wait for each lock held by another (0: try once); then LOCK_HELD naming its holder. */
  readonly waitMs: number;
  /** Called once per lock this has to wait for, with who holds it. */
  readonly onWait?: (id: string, holder: LockHolder) => void;
  readonly pollMs?: number;
}

export interface BackupLocksOptions {
  /** How long a lock outlives its holder's last renewal (RELEVO_LEASE_TTL_MS); renewed every third of it. */
  readonly ttlMs: number;
  readonly logger: Logger;
}

/**
 * Extends the lock if it is still this holder's (1), else 0. A lock that
 * lapsed is never taken again behind the holder's back: a renewal queued
 * while Redis was away may run after the release.
 */
const RENEW = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end`;

/** Removes the lock if it is still this holder's. */
const RELEASE = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end`;

export class BackupLocks {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Pick<RedisKeys, "backupLock">,
    private readonly options: BackupLocksOptions,
  ) {}

  /**
   * Locks every backup of `ids`, waiting for each while another holder (in
   * this process or another) has it. Always taken in id order, so two
   * callers locking overlapping sets cannot deadlock. The locks already
   * taken are renewed while this waits for the next.
   */
  async acquire(ids: readonly string[], options: LockOptions): Promise<HeldBackupLocks> {
    const sorted = [...new Set(ids)].sort();
    const me: LockHolder = {
      host: os.hostname(),
      pid: process.pid,
      purpose: options.purpose,
      since: new Date().toISOString(),
      token: randomBytes(8).toString("hex"),
    };
    const value = JSON.stringify(me);
    const held: string[] = [];
    const lost = new AbortController();
    const stopRenewing = this.keepAlive(held, value, (id) => {
      if (!lost.signal.aborted)
        lost.abort(
          new RelevoError(
            ErrorCode.LockLost,
            `${options.purpose}: backup ${id}'s lock lapsed while held; stopped, as an expiry may take its content`,
            {
              details: { backupId: id, lockKey: this.keys.backupLock(id) },
            },
          ),
        );
    });
    let released = false;
    const release = async (): Promise<void> => {
      if (released) return;
      released = true;
      stopRenewing();
      for (const id of held.splice(0).reverse()) await this.releaseOne(id, value);
    };
    try {
      for (const id of sorted) {
        await this.acquireOne(id, value, options);
        held.push(id);
      }
    } catch (error) {
      await release();
      throw error;
    }
    return { ids: sorted, lost: lost.signal, release, [Symbol.asyncDispose]: release };
  }

  /**
   * Renews the locks in `held` (as it grows) every third of the time to
   * live, until the returned function is called; `onLapsed` hears of each
   * that lapsed.
   */
  private keepAlive(held: readonly string[], value: string, onLapsed: (id: string) => void): () => void {
    // One renewal pass at a time: while Redis does not answer, renewals do not pile up.
    let renewing: Promise<void> | null = null;
    const lost = new Set<string>();
    const renewAll = (): Promise<void> =>
      this.renew(
        held.filter((id) => !lost.has(id)),
        value,
      ).then((lapsed) =>
        lapsed.forEach((id) => {
          lost.add(id);
          onLapsed(id);
        }),
      );
    const timer = setInterval(
      () => {
        renewing ??= renewAll().finally(() => (renewing = null));
      },
      Math.max(100, Math.floor(this.options.ttlMs / 3)),
    );
    timer.unref(); // a lock never keeps a process alive on its own
    return () => clearInterval(timer);
  }

  /**
   * Removes the lock if it is still this holder's. It lapses on its own
   * within a time to live: a release that fails, or waits on a Redis that
   * went away, is no failure of the work done under it, and never holds
   * the process up for longer than that.
   */
  private async releaseOne(id: string, value: string): Promise<void> {
    const releasing = this.redis.eval(RELEASE, 1, this.keys.backupLock(id), value);
    const failure = releasing.then(
      () => null,
      (error: Error) => error.message,
    );
    const settled = await settlesWithin(releasing, this.options.ttlMs);
    const why = settled ? await failure : `no answer within ${this.options.ttlMs} ms`;
    if (why !== null)
      this.options.logger.warn({ backupId: id, err: why }, `backup ${id}'s lock not released (Redis): it lapses on its own`);
  }

  /** Who holds a backup's lock now; null when nobody does. */
  async holder(id: string): Promise<LockHolder | null> {
    const value = await this.redis.get(this.keys.backupLock(id));
    return value === null ? null : parseHolder(value);
  }

  private async acquireOne(id: string, value: string, options: LockOptions): Promise<void> {
    const key = this.keys.backupLock(id);
    const started = Date.now();
    let announced = false;
    // Redis unreachable: SERVICE_UNAVAILABLE (retry later), as every request that needs Redis.
    const call = <T>(operation: () => Promise<T>): Promise<T> => redisCall(`backup ${id}'s lock`, operation);
    for (;;) {
      if ((await call(() => this.redis.set(key, value, "PX", this.options.ttlMs, "NX"))) === "OK") return;
      const holder = await call(() => this.holder(id));
      if (holder === null) continue; // released or lapsed meanwhile
      const waitedMs = Date.now() - started;
      if (waitedMs >= options.waitMs) throw this.lockHeld(id, holder, options);
      if (!announced) options.onWait?.(id, holder);
      announced = true;
      await sleep(Math.min(options.pollMs ?? 200, Math.max(1, options.waitMs - waitedMs)));
    }
  }

  /** Renews these locks; returns those that lapsed (each said once: they are not renewed again). */
  private async renew(ids: readonly string[], value: string): Promise<string[]> {
    const { logger, ttlMs } = this.options;
    const lapsed: string[] = [];
    for (const id of ids) {
      try {
        const renewed = (await this.redis.eval(RENEW, 1, this.keys.backupLock(id), value, String(ttlMs))) as number;
        if (renewed === 0) {
          // Redis lost it, or this process stalled for longer than the time to live: its holder is told (`lost`).
          lapsed.push(id);
          const other = await this.holder(id).catch(() => null);
          logger.error(
            { backupId: id, holder: other && publicHolder(other) },
            `backup ${id}'s lock lapsed while held` + (other ? `: ${describeHolder(other)} holds it now` : ""),
          );
        }
      } catch (error) {
        logger.warn({ backupId: id, err: (error as Error).message }, `backup ${id}'s lock not renewed: Redis unavailable`);
      }
    }
    return lapsed;
  }

  private lockHeld(id: string, holder: LockHolder, options: LockOptions): RelevoError {
    const ttlS = Math.ceil(this.options.ttlMs / 1000);
    return new RelevoError(
      ErrorCode.LockHeld,
      `${options.purpose}: backup ${id}'s lock is held by ${describeHolder(holder)}` +
        (options.waitMs > 0 ? ` (waited ${Math.round(options.waitMs / 1000)} s)` : "") +
        `; retry once it is done (a holder that died frees it within ${ttlS} s)`,
      { details: { backupId: id, lockKey: this.keys.backupLock(id), holder: publicHolder(holder) } },
    );
  }
}

function describeHolder(holder: LockHolder): string {
  return `pid ${holder.pid} on ${holder.host}, ${holder.purpose}, since ${holder.since}`;
}

/** What is told of a holder: everything but its token (which would let anyone release its lock). */
function publicHolder(holder: LockHolder): Omit<LockHolder, "token"> {
  return { host: holder.host, pid: holder.pid, purpose: holder.purpose, since: holder.since };
}

/** A lock's value as its holder; a value no holder wrote (another program's) still names what can be said. */
function parseHolder(value: string): LockHolder {
  try {
    const parsed = JSON.parse(value) as Partial<LockHolder>;
    return {
      host: String(parsed.host ?? ""),
      pid: Number(parsed.pid ?? 0),
      purpose: String(parsed.purpose ?? "unknown"),
      since: String(parsed.since ?? ""),
      token: String(parsed.token ?? ""),
    };
  } catch {
    return { host: "", pid: 0, purpose: "an unreadable lock value", since: "", token: "" };
  }
}
