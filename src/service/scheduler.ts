import { createRedisClient } from "../redis/redis-client";
import type { BackupService } from "../backup/backup-service";
import { BackupScheduler } from "../scheduler/backup-scheduler";
import type { StartContext } from "./cleanups";
import type { RedisAndEvents } from "./redis-and-events";

/** Scheduled backups and verification, on a Redis connection of the scheduler's own. */
export async function startScheduler(
  options: StartContext & { readonly redis: RedisAndEvents; readonly backups: BackupService },
): Promise<BackupScheduler> {
  const { config, logger, cleanups, redis, backups } = options;
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
  });
  await scheduler.start();
  cleanups.push(() => scheduler.stop());
  return scheduler;
}
