import { Agenda, backoffStrategies, type BackoffStrategy, type Job } from "agenda";
import { RedisBackend } from "@agendajs/redis-backend";
import type Redis from "ioredis";
import type { BackupService } from "../backup/backup-service";
import { ErrorCode, RelevoError, isRelevoError } from "../errors";
import type { EventLog } from "../events/event-log";
import type { Logger } from "../log";
import type { RedisKeys } from "../redis/keys";
import { settlesWithin } from "../util/sleep";

/** The scheduled jobs Relevo knows. */
export const SCHEDULED_JOBS = {
  "full-backup": "a full backup",
  "differential-backup": "a differential backup (the blocks changed since the newest full)",
  "incremental-backup": "an incremental backup (the blocks changed since the newest backup)",
  "verify-newest": "verification with a restore test of the newest completed backup",
} as const;

export type ScheduledJobName = keyof typeof SCHEDULED_JOBS;

/**
 * A job that keeps Relevo's own records tidy (the events table's retention):
 * run by Agenda like the schedules (once across instances), but fixed, not
 * listed or changed through the API.
 */
export interface HousekeepingJob {
  readonly name: string;
  /** 5-field cron expression, UTC. */
  readonly cron: string;
  readonly run: () => Promise<void>;
}

export interface ScheduleView {
  readonly name: ScheduledJobName;
  readonly description: string;
  readonly cron: string | null;
  readonly paused: boolean;
  readonly nextRunAt: string | null;
  readonly lastRunAt: string | null;
  readonly lastFinishedAt: string | null;
  readonly lastFailure: string | null;
}

export interface BackupSchedulerOptions {
  /**
   * A connection of its own for Agenda, with an offline queue (Agenda's
   * notification channel subscribes on a duplicate of it before it is
   * connected). The scheduler closes it only when Redis is away at stop.
   */
  readonly redis: Redis;
  readonly keys: RedisKeys["agenda"];
  readonly backups: BackupService;
  readonly events: EventLog;
  readonly logger: Logger;
  /** Cron expression (UTC) per job; "off" leaves the job unscheduled. */
  readonly cron: Readonly<Record<ScheduledJobName, string>>;
  /** How often Agenda looks for due jobs (ms). */
  readonly processEveryMs?: number;
  /** A job's lock lasts this long unless renewed; running jobs renew it every third of it. */
  readonly lockLifetimeMs?: number;
  /** Retries of a failed run (exponential backoff from retryDelayMs) before it waits for its next time. */
  readonly retries?: number;
  readonly retryDelayMs?: number;
  readonly housekeeping?: readonly HousekeepingJob[];
}

/**
 * Scheduled backups and verification with Agenda on Relevo's Redis: with
 * several service instances each run happens once (Agenda locks a job in
 * Redis before running it). A scheduled backup that finds another backup
 * running is skipped and recorded (`schedule:skipped`), not retried; a run
 * that fails is recorded (`schedule:failed`) and tried again at its next time.
 * Retention runs after every backup (see BackupService).
 */
export class BackupScheduler {
  private readonly agenda: Agenda;
  private readonly backend: RedisBackend;
  private readonly backoff: BackoffStrategy;
  /** Connections Agenda's notification channel made from ours (see stop). */
  private readonly duplicates = new Set<Redis>();

  constructor(private readonly options: BackupSchedulerOptions) {
    const duplicate = options.redis.duplicate.bind(options.redis);
    options.redis.duplicate = (...args: Parameters<Redis["duplicate"]>): Redis => {
      const copy = duplicate(...args);
      this.duplicates.add(copy);
      return copy;
    };
    const backend = new RedisBackend({
      redis: options.redis,
      keyPrefix: options.keys.prefix,
      channelName: options.keys.channel,
    });
    // Both emit "error" while Redis is away; an EventEmitter's unheard "error"
    // would crash the service. They reconnect by themselves.
    const logError = (error: Error): void => options.logger.warn({ err: error.message }, "scheduler: Redis unavailable");
    (backend.notificationChannel as unknown as NodeJS.EventEmitter).on("error", logError);
    this.backend = backend;
    this.agenda = new Agenda({
      backend,
      // A number: Agenda 6 reads "200 milliseconds" as 200000 ms.
      processEvery: options.processEveryMs ?? 5000,
      // Short, and renewed while a job runs (see run): a dead instance's job is
      // taken over soon, and Agenda's per-job keep-alive timer (half the
      // lifetime, left behind after the job) does not hold a stopping process.
      defaultLockLifetime: options.lockLifetimeMs ?? 60000,
      defaultConcurrency: 1,
    });
    this.agenda.on("error", logError);
    // Agenda reschedules a failed run by this (and, for a recurring job, goes
    // back to the cron time once retries are exhausted or a run succeeds).
    this.backoff = backoffStrategies.exponential({ delay: options.retryDelayMs ?? 60000, maxRetries: options.retries ?? 3, factor: 2 });
    const definition = { backoff: this.backoff };
    for (const [name, type] of [
      ["full-backup", "full"],
      ["differential-backup", "differential"],
      ["incremental-backup", "incremental"],
    ] as const) {
      this.agenda.define(
        name,
        (job: Job) =>
          this.run(job, async () => {
            await (
              await options.backups.start(type)
            ).done;
          }),
        definition,
      );
    }
    this.agenda.define(
      "verify-newest",
      (job: Job) =>
        this.run(job, async () => {
          const newest = await options.backups.latestCompleted();
          const verified = await options.backups.verify(newest.id, { restoreTest: true });
          const ok = verified.verification?.contentOk && verified.verification.restoreTest?.ok;
          if (!ok) throw new RelevoError(ErrorCode.PreconditionFailed, `backup ${newest.id} failed verification`);
        }),
      definition,
    );
    for (const job of options.housekeeping ?? []) this.agenda.define(job.name, (run: Job) => this.run(run, job.run), definition);
  }

  async start(): Promise<void> {
    await this.agenda.start();
    for (const job of this.options.housekeeping ?? []) {
      await this.agenda.every(job.cron, job.name, undefined, { timezone: "UTC", skipImmediate: true });
    }
    for (const name of Object.keys(SCHEDULED_JOBS) as ScheduledJobName[]) {
      const cron = this.options.cron[name];
      if (cron === "off") continue;
      // `every` keeps one job per name: restarting (or a second instance) does not add another.
      await this.agenda.every(cron, name, undefined, { timezone: "UTC", skipImmediate: true });
    }
  }

  /**
   * Stops taking jobs and unlocks the ones it holds (another instance may take
   * them). Not drain(): Agenda 6's drain() leaves its notification
   * subscriber connected and a later stop() does nothing. A backup a job
   * started is awaited by the service's own shutdown (BackupService.waitForIdle).
   *
   * With Redis away, Agenda's stop waits for ever on queued commands (the
   * unlock, the notification channel's unsubscribe). After `graceMs` the
   * scheduler closes its connections instead; the job locks it held then
   * expire after their lock lifetime.
   */
  async stop(graceMs = 5000): Promise<void> {
    const redisAway = this.options.redis.status !== "ready";
    const stopping = this.agenda.stop();
    if (await settlesWithin(stopping, redisAway ? Math.min(graceMs, 1000) : graceMs)) {
      await stopping.catch((error: Error) => this.options.logger.warn({ err: error.message }, "scheduler: jobs not unlocked"));
      return;
    }
    this.options.logger.warn(
      { graceMs },
      "scheduler stopped without unlocking its jobs: Redis unavailable (the locks expire by themselves)",
    );
    // ioredis does not fail the queued commands of a client disconnected while
    // it waits to reconnect, so those promises are left pending: they hold no
    // timer or socket. The channel's disconnect clears its reconnect timer first.
    for (const client of [...this.duplicates, this.options.redis]) client.disconnect();
    void this.backend.notificationChannel.disconnect().catch(() => undefined);
    void stopping.catch(() => undefined);
  }

  async list(): Promise<ScheduleView[]> {
    const { jobs } = await this.agenda.queryJobs({ names: Object.keys(SCHEDULED_JOBS), includeDisabled: true });
    return (Object.keys(SCHEDULED_JOBS) as ScheduledJobName[]).map((name) => {
      const job = jobs.find((candidate) => candidate.name === name && candidate.repeatInterval !== undefined);
      const iso = (value: Date | string | null | undefined): string | null => (value ? new Date(value).toISOString() : null);
      return {
        name,
        description: SCHEDULED_JOBS[name],
        cron: job?.repeatInterval !== undefined ? String(job.repeatInterval) : null,
        paused: job?.disabled ?? false,
        nextRunAt: job?.disabled ? null : iso(job?.nextRunAt),
        lastRunAt: iso(job?.lastRunAt),
        lastFinishedAt: iso(job?.lastFinishedAt),
        lastFailure: job?.failReason ?? null,
      };
    });
  }

  async update(name: string, cron: string): Promise<void> {
    const known = this.known(name);
    await this.agenda.every(cron, known, undefined, { timezone: "UTC", skipImmediate: true });
  }

  async pause(name: string, paused: boolean): Promise<void> {
    const known = this.known(name);
    if (paused) await this.agenda.disable({ name: known });
    else await this.agenda.enable({ name: known });
  }

  async remove(name: string): Promise<void> {
    await this.agenda.cancel({ name: this.known(name) });
  }

  /** Runs a job now, once (its schedule is unchanged). */
  async runNow(name: string): Promise<void> {
    await this.agenda.now(this.known(name));
  }

  /** Runs a housekeeping job now, once, through Agenda (as its schedule would). */
  async runHousekeepingNow(name: string): Promise<void> {
    if (!(this.options.housekeeping ?? []).some((job) => job.name === name)) {
      throw new RelevoError(ErrorCode.NotFound, `no housekeeping job named "${name}"`);
    }
    await this.agenda.now(name);
  }

  private known(name: string): ScheduledJobName {
    if (!(name in SCHEDULED_JOBS)) {
      throw new RelevoError(ErrorCode.NotFound, `no schedule named "${name}"; schedules are ${Object.keys(SCHEDULED_JOBS).join(", ")}`);
    }
    return name as ScheduledJobName;
  }

  private async run(job: Job, work: () => Promise<void>): Promise<void> {
    const name = job.attrs.name;
    const renew = setInterval(() => void job.touch().catch(() => undefined), Math.max(500, (this.options.lockLifetimeMs ?? 60000) / 3));
    try {
      await work();
    } catch (error) {
      if (isRelevoError(error) && error.code === ErrorCode.BackupInProgress) {
        await this.options.events.emit({
          kind: "schedule:skipped",
          severity: "warning",
          node: null,
          message: `scheduled ${name} skipped: ${error.message}`,
          data: { name, reason: error.message },
        });
        return; // not a failure: no retry storm
      }
      // Agenda counts this failure after we rethrow it; the backoff it will apply is known now.
      const attempt = (job.attrs.failCount ?? 0) + 1;
      const message = (error as Error).message;
      const retryInMs = this.backoff({ attempt, error: error as Error, jobName: name, jobData: job.attrs.data });
      await this.options.events.emit({
        kind: "schedule:failed",
        severity: "critical",
        node: null,
        message: `scheduled ${name} failed (attempt ${attempt}): ${message}; ${retryInMs === null ? "no retry left: next at its scheduled time" : `retrying in ${Math.round(retryInMs / 1000)} s`}`,
        data: { name, error: message, attempt, retryInMs },
      });
      throw error;
    } finally {
      clearInterval(renew);
    }
  }
}
