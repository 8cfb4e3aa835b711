import type Redis from "ioredis";
import type { EventPublisher } from "../events/event-log";
import type { RedisKeys } from "../redis/keys";
import type { CopyProgress } from "./take-backup";

export const BACKUP_PROGRESS_TOPIC = "BACKUP_PROGRESS";
const MIN_INTERVAL_MS = 250; // a few updates a second at most
const KEEP_SECONDS = 24 * 3600;

export interface BackupProgress {
  readonly id: string;
  readonly phase: "copying" | "waiting-for-wal" | "completed" | "failed";
  readonly filesDone: number;
  readonly filesTotal: number;
  readonly bytesDone: number;
  readonly bytesTotal: number;
  /** Bytes put into the repository so far (compressed, encrypted): what uploads have sent. */
  readonly bytesStored: number;
  readonly bytesPerSecond: number;
  readonly etaSeconds: number | null;
  readonly updatedAt: string;
}

/** Pure: rate and ETA from what is done since the start. */
export function progressFigures(id: string, progress: CopyProgress, startedAtMs: number, nowMs: number): BackupProgress {
  const seconds = Math.max(0.001, (nowMs - startedAtMs) / 1000);
  const bytesPerSecond = Math.round(progress.bytesDone / seconds);
  const remaining = Math.max(0, progress.bytesTotal - progress.bytesDone);
  return {
    id,
    ...progress,
    bytesPerSecond,
    etaSeconds: progress.phase === "copying" && bytesPerSecond > 0 ? Math.ceil(remaining / bytesPerSecond) : null,
    updatedAt: new Date(nowMs).toISOString(),
  };
}

/**
 * Live progress of the running backup: a Redis hash per backup (what
 * `backup(id) { progress }` reads) and a publish for `backupProgress`
 * subscribers, throttled to a few per second. Losing an update while Redis is
 * away is harmless: the next one replaces it.
 */
export class BackupProgressRecorder {
  private lastSent = 0;

  constructor(
    private readonly redis: Redis,
    private readonly keys: Pick<RedisKeys, "backupProgress">,
    private readonly publisher: EventPublisher,
  ) {}

  key(id: string): string {
    return this.keys.backupProgress(id);
  }

  record(progress: BackupProgress, options: { final?: boolean } = {}): void {
    const now = Date.now();
    if (!options.final && progress.phase === "copying" && now - this.lastSent < MIN_INTERVAL_MS) return;
    this.lastSent = now;
    const key = this.key(progress.id);
    void this.redis
      .multi()
      .hset(key, { json: JSON.stringify(progress) })
      .expire(key, KEEP_SECONDS)
      .exec()
      .catch(() => undefined);
    this.publisher.publish(BACKUP_PROGRESS_TOPIC, progress);
  }

  async read(id: string): Promise<BackupProgress | null> {
    const json = await this.redis.hget(this.key(id), "json");
    if (!json) return null;
    // A record an older version wrote has no bytesStored.
    const progress = JSON.parse(json) as Omit<BackupProgress, "bytesStored"> & { bytesStored?: number };
    return { ...progress, bytesStored: progress.bytesStored ?? 0 };
  }
}
