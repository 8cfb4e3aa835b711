import type Redis from "ioredis";
import type { EventLog } from "../events/event-log";
import type { Logger } from "../log";

/**
 * Whether the pusher reaches the repository. While it cannot (the object
 * store down, its credentials refused, a full disk under a directory
 * repository), received WAL stays in the spool and the hold slot keeps the
 * primary's copy: nothing is lost, but the archive's recovery point falls
 * behind and, left long enough, the spool fills. A streak of failed passes
 * lasting `failingAfterMs` is an `archive:push-failing` event (once per
 * streak) and a reason in the cluster's health; the first pass that pushes
 * again ends it with `archive:push-recovered`.
 */
export interface PushStreak {
  /** When the streak's first failed pass ended (ms since the epoch); null while passes succeed. */
  readonly failingSince: number | null;
  /** Whether the streak was reported (archive:push-failing emitted). */
  readonly reported: boolean;
}

export const NO_STREAK: PushStreak = { failingSince: null, reported: false };

export interface PushStep {
  readonly streak: PushStreak;
  /** What this pass makes known: the streak reported, ended after it was, or nothing. */
  readonly event: "failing" | "recovered" | null;
}

/**
 * The streak after a pass that ended at `at`: it failed, pushed something,
 * or had nothing to push (idle). An idle pass says nothing of the
 * repository (it may not have been asked anything): it neither starts nor
 * ends a streak, or a store down while segments come slower than
 * `failingAfterMs` would never be reported. Pure.
 */
export function afterPushPass(
  streak: PushStreak,
  pass: { readonly outcome: "failed" | "pushed" | "idle"; readonly at: number },
  failingAfterMs: number,
): PushStep {
  if (pass.outcome === "idle") return { streak, event: null };
  if (pass.outcome === "pushed") return { streak: NO_STREAK, event: streak.reported ? "recovered" : null };
  const failingSince = streak.failingSince ?? pass.at;
  const report = !streak.reported && pass.at - failingSince >= failingAfterMs;
  return { streak: { failingSince, reported: streak.reported || report }, event: report ? "failing" : null };
}

/** How long passes must keep failing before it is reported: S3's own retries (five, backing off) take most of it. */
export const PUSH_FAILING_AFTER_MS = 30_000;

/** While passes fail, their error is logged at most this often (a pass runs every 200 ms). */
const LOG_EVERY_MS = 60_000;

/**
 * What every instance knows of a repository's pushes (kept in Redis by the
 * pusher's instance, see PushHealth): the cluster's health and the
 * `repositories` query read it wherever they run.
 */
export interface PushStatus {
  /** When the current failure streak began (ISO 8601); null while pushes succeed. */
  readonly failingSince: string | null;
  /** Whether the streak was reported (archive:push-failing): a health reason until it ends. */
  readonly reported: boolean;
  /** The streak's last failure; null while pushes succeed. */
  readonly lastError: string | null;
  /** Complete segments and histories received and not in the repository after the last pass (its WAL lag, in files). */
  readonly pendingFiles: number;
  /** When the pusher last put something into the repository (ISO 8601); null before its first put. */
  readonly lastPushAt: string | null;
}

export const NO_PUSH_STATUS: PushStatus = { failingSince: null, reported: false, lastError: null, pendingFiles: 0, lastPushAt: null };

/** Where the statuses live: a Redis hash, a field per repository (its number). */
export interface PushStatusStore {
  readonly redis: Pick<Redis, "hset" | "hget">;
  readonly key: string;
  /** The repository's number (RELEVO_REPO<n>_…). */
  readonly index: number;
}

/** The pusher's streak kept, logged, reported and shared for one repository (see afterPushPass). */
export class PushHealth {
  private streak: PushStreak = NO_STREAK;
  private lastError: string | null = null;
  private loggedAt = 0;
  private shared: PushStatus = NO_PUSH_STATUS;
  /** The last status read from Redis, for health while Redis is away. */
  private lastRead: PushStatus = NO_PUSH_STATUS;
  /** Whether the status in Redis was taken over (see adoptStoredStatus). */
  private adopted = false;

  constructor(
    private readonly options: {
      /** The repository, as messages name it (its location: never a credential). */
      readonly repository: string;
      readonly events: Pick<EventLog, "emit">;
      readonly logger: Logger;
      readonly store: PushStatusStore;
      readonly failingAfterMs?: number;
      readonly now?: () => number;
    },
  ) {}

  /** The repository's push status as every instance sees it (the last one read while Redis is away). */
  async status(): Promise<PushStatus> {
    const { redis, key, index } = this.options.store;
    try {
      const json = await redis.hget(key, String(index));
      this.lastRead = json ? { ...NO_PUSH_STATUS, ...(JSON.parse(json) as Partial<PushStatus>) } : NO_PUSH_STATUS;
    } catch {
      // Redis away: what was last known.
    }
    return this.lastRead;
  }

  /** Why WAL does not reach the repository, for the cluster's health (any instance): none while it does, or not for long. */
  async healthReasons(): Promise<string[]> {
    const status = await this.status();
    if (!status.reported) return [];
    return [
      `WAL is not pushed to the repository ${this.options.repository} since ${status.failingSince} (${status.lastError}): it waits in the spool`,
    ];
  }

  /**
   * A pass of the pusher ended: `error` its failure (null when it did not
   * fail), `pushed` how many files it put, `pending` how many it left.
   */
  async observe(pass: { readonly error: Error | null; readonly pushed: number; readonly pending: number }): Promise<void> {
    const { events, logger, repository } = this.options;
    const { error } = pass;
    if (!this.adopted) await this.adoptStoredStatus();
    const at = (this.options.now ?? Date.now)();
    const previous = this.streak;
    const outcome = error ? "failed" : pass.pushed > 0 ? "pushed" : "idle";
    const step = afterPushPass(previous, { outcome, at }, this.options.failingAfterMs ?? PUSH_FAILING_AFTER_MS);
    this.streak = step.streak;
    if (error) {
      this.lastError = error.message;
      if (previous.failingSince === null || at - this.loggedAt >= LOG_EVERY_MS) {
        this.loggedAt = at;
        logger.warn({ err: error.message, repository }, "WAL not pushed to the repository: it waits in the spool");
      }
    } else if (outcome === "pushed" && previous.failingSince !== null) {
      logger.info({ repository, failedForMs: at - previous.failingSince }, "WAL pushed to the repository again");
    }
    if (step.streak.failingSince === null) this.lastError = null;
    await this.share({
      failingSince: step.streak.failingSince === null ? null : new Date(step.streak.failingSince).toISOString(),
      reported: step.streak.reported,
      lastError: this.lastError,
      pendingFiles: pass.pending,
      lastPushAt: outcome === "pushed" ? new Date(at).toISOString() : this.shared.lastPushAt,
    });
    if (step.event === "failing") {
      await events.emit({
        kind: "archive:push-failing",
        node: null,
        severity: "critical",
        message: `WAL has not reached the repository ${repository} for ${Math.round((at - step.streak.failingSince!) / 1000)} s (${error!.message}): it waits in the spool, and the primary keeps its copy`,
        data: { repository, error: error!.message, failingSince: new Date(step.streak.failingSince!).toISOString() },
      });
    } else if (step.event === "recovered") {
      await events.emit({
        kind: "archive:push-recovered",
        node: null,
        severity: "info",
        message: `WAL reaches the repository ${repository} again after ${Math.round((at - previous.failingSince!) / 1000)} s`,
        data: { repository, failedForMs: at - previous.failingSince! },
      });
    }
  }

  /**
   * Takes over the status another instance (or this one before a restart)
   * left in Redis, before the first pass is counted: a streak it reported
   * goes on, so that its end is `archive:push-recovered` and a store still
   * down is not reported a second time. Redis away: nothing to take over.
   */
  private async adoptStoredStatus(): Promise<void> {
    const stored = await this.status();
    this.adopted = true;
    this.shared = stored;
    if (stored.failingSince === null) return;
    this.streak = { failingSince: Date.parse(stored.failingSince), reported: stored.reported };
    this.lastError = stored.lastError;
  }

  /**
   * Writes the status to Redis when it changed but for its last push's time
   * (a push every 200 ms would otherwise be a write every 200 ms: that is
   * written at most every 10 s). A write that fails is tried again at the
   * next pass.
   */
  private async share(status: PushStatus): Promise<void> {
    const before = this.shared;
    const same =
      before.failingSince === status.failingSince &&
      before.reported === status.reported &&
      before.lastError === status.lastError &&
      before.pendingFiles === status.pendingFiles;
    const pushAge = status.lastPushAt && before.lastPushAt ? Date.parse(status.lastPushAt) - Date.parse(before.lastPushAt) : Infinity;
    if (same && (status.lastPushAt === before.lastPushAt || pushAge < SHARE_PUSH_TIME_EVERY_MS)) return;
    const { redis, key, index } = this.options.store;
    try {
      await redis.hset(key, String(index), JSON.stringify(status));
      this.shared = status;
    } catch (error) {
      this.options.logger.debug({ err: (error as Error).message }, "the pusher's status not shared (Redis)");
    }
  }
}

/** How often the time of the last push alone is written to Redis. */
const SHARE_PUSH_TIME_EVERY_MS = 10_000;
