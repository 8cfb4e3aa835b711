import { createRedisClient } from "../redis/redis-client";
import type { BackupService } from "../backup/backup-service";
import type { PrimaryDatabase } from "../db/primary-database";
import { pruneEvents } from "../events/event-retention";
import { BackupScheduler, type HousekeepingJob } from "../scheduler/backup-scheduler";
import type { StartContext } from "./cleanups";
import type { RedisAndEvents } from "./redis-and-events";

/** The events table's retention (RELEVO_EVENTS_RETENTION), hourly. */
export const PRUNE_EVENTS_JOB = "prune-events";

/** Scheduled backups and verification, and housekeeping, on a Redis connection of the scheduler's own. */
export async function startScheduler(
  options: StartContext & { readonly redis: RedisAndEvents; readonly backups: BackupService; readonly database: PrimaryDatabase },
): Promise<BackupScheduler> {
  const { config, logger, cleanups, redis, backups, database } = options;
  const pruneOldEvents: HousekeepingJob = {
    name: PRUNE_EVENTS_JOB,
    cron: "17 * * * *",
    run: async () => {
      const { deleted, cutoff } = await pruneEvents(database, { now: new Date(), retentionMs: config.eventsRetention });
      if (deleted > 0) logger.info({ deleted, retention: config.eventsRetention, cutoff }, "events past their retention deleted");
    },
  };
  const agendaRedis = createRedisClient(redis.endpoint, { name: "agenda", queueWhileOffline: true });
  cleanups.push(() => agendaRedis.disconnect());
  const scheduler = new BackupScheduler({
    redis: agendaRedis,
    keys: redis.keys.agenda,
    backups,
    events: redis.events,
    logger,
    cron: {
      "full-backup": config.scheduleFullBackup,
      "differential-backup": config.scheduleDifferentialBackup,
      "incremental-backup": config.scheduleIncrementalBackup,
      "verify-newest": config.scheduleVerify,
    },
    processEveryMs: config.schedulerPollMs,
    lockLifetimeMs: config.schedulerLockLifetimeMs,
    retries: config.scheduleRetries,
    retryDelayMs: config.scheduleRetryDelayMs,
    housekeeping: [pruneOldEvents],
  });
  await scheduler.start();
  cleanups.push(() => scheduler.stop());
  return scheduler;
}
