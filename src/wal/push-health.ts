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

/** The pusher's streak kept, logged and reported for one repository (see afterPushPass). */
export class PushHealth {
  private streak: PushStreak = NO_STREAK;
  private lastError: string | null = null;
  private loggedAt = 0;

  constructor(
    private readonly options: {
      /** The repository, as messages name it (its location: never a credential). */
      readonly repository: string;
      readonly events: Pick<EventLog, "emit">;
      readonly logger: Logger;
      readonly failingAfterMs?: number;
      readonly now?: () => number;
    },
  ) {}

  /** Why WAL does not reach the repository, for the cluster's health; null while it does (or not for long). */
  get reason(): string | null {
    if (!this.streak.reported) return null;
    return `WAL is not pushed to the repository ${this.options.repository} since ${new Date(this.streak.failingSince!).toISOString()} (${this.lastError}): it waits in the spool`;
  }

  /** A pass of the pusher ended: `error` its failure (null when it did not fail), `pushed` how many files it put. */
  async observe(pass: { readonly error: Error | null; readonly pushed: number }): Promise<void> {
    const { events, logger, repository } = this.options;
    const { error } = pass;
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
      this.lastError = null;
    }
  }
}
