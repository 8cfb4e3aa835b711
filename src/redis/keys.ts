/**
 * Every Redis key and channel of one cluster, in one place. The prefix
 * (`relevo:<cluster>`) isolates clusters, and tests, sharing one Redis.
 * Renaming a key here is a format change: instances of the previous version
 * would no longer see the leases, journal or state written by this one.
 */
export interface RedisKeys {
  /** Every key of the cluster starts with it. */
  readonly prefix: string;
  /** The event stream (XADD/XREAD; consumer group CONSOLIDATOR_GROUP). */
  readonly events: string;
  /** The latest topology snapshot (JSON). */
  readonly topology: string;
  readonly topologyChannel: string;
  readonly eventsChannel: string;
  /** Recorded primary, epoch, fenced nodes, synchronous set, eligibility (failover/cluster-state). */
  readonly clusterState: string;
  /** The primary's last LSN seen by the monitor: the bound of what a failover can lose. */
  readonly primaryLsn: string;
  /** Present while automatic failover, rejoin and failback are held back. */
  readonly maintenance: string;
  /** Why the monitor holds a failover back although the primary is lost (JSON, expires): a health reason. */
  readonly failoverHeldBack: string;
  /** The WAL archive's gaps, a hash of one JSON field per gap (wal/archive-gaps): reported once, a health reason until settled. */
  readonly archiveGaps: string;
  /** Each repository's push status, a hash of one JSON field per repository number (wal/push-health): health, `repositories`. */
  readonly archivePush: string;
  /** Leases that keep a piece of work to one instance at a time (redis-lease). */
  readonly leases: {
    readonly walArchiver: string;
    /** Held while a backup runs: switchover and failback refuse while it exists. */
    readonly backup: string;
    readonly failoverMonitor: string;
  };
  /** The operation journal: its lock, the entry, and the fencing-token counter. */
  readonly operation: {
    readonly lock: string;
    readonly entry: string;
    readonly fencing: string;
  };
  /** Agenda's Redis backend: its key prefix and notification channel. */
  readonly agenda: {
    readonly prefix: string;
    readonly channel: string;
  };
  /** The API's token buckets (rate-limit): `<rateLimit>:token:<id>` or `<rateLimit>:address:<ip>`, each a hash that expires. */
  readonly rateLimit: string;
  /** Taken (SET NX, expiring) by the instance that checks the certificates' expiry this interval. */
  readonly expiryCheck: string;
  /** A running backup's progress (a hash per backup id). */
  backupProgress(backupId: string): string;
  /**
   * The repository lock of a backup (storage/backup-locks): its holder,
   * expiring unless renewed. Verification, restore and expiry take turns.
   */
  backupLock(backupId: string): string;
  /**
   * Present (expiring) while a reference point's capture pauses `node`'s WAL
   * replay: the replay pause watch resumes a paused replica only without it.
   */
  replayPauseMarker(node: string): string;
}

/** Pub/sub topics (shared by every instance through Redis). */
export const TOPOLOGY_TOPIC = "TOPOLOGY_CHANGED";
export const EVENTS_TOPIC = "CLUSTER_EVENT";

/** Consumer group of the consolidator on the events stream. */
export const CONSOLIDATOR_GROUP = "consolidator";

export function redisKeys(clusterName: string): RedisKeys {
  const prefix = `relevo:${clusterName}`;
  return {
    prefix,
    events: `${prefix}:events`,
    topology: `${prefix}:topology`,
    topologyChannel: TOPOLOGY_TOPIC,
    eventsChannel: EVENTS_TOPIC,
    clusterState: `${prefix}:cluster-state`,
    primaryLsn: `${prefix}:primary-lsn`,
    maintenance: `${prefix}:maintenance`,
    failoverHeldBack: `${prefix}:failover-held-back`,
    archiveGaps: `${prefix}:archive-gaps`,
    archivePush: `${prefix}:archive-push`,
    rateLimit: `${prefix}:rate-limit`,
    expiryCheck: `${prefix}:tls:expiry-check`,
    leases: {
      walArchiver: `${prefix}:lease:wal-archiver`,
      backup: `${prefix}:lease:backup`,
      failoverMonitor: `${prefix}:lease:failover-monitor`,
    },
    operation: {
      lock: `${prefix}:operation:lock`,
      entry: `${prefix}:operation`,
      fencing: `${prefix}:operation:fencing`,
    },
    agenda: {
      prefix: `${prefix}:agenda:`,
      channel: `${prefix}:agenda:notifications`,
    },
    backupProgress: (backupId) => `${prefix}:backup-progress:${backupId}`,
    backupLock: (backupId) => `${prefix}:backup-lock:${backupId}`,
    replayPauseMarker: (node) => `${prefix}:replay-pause:${node}`,
  };
}
