import { BackupProgressRecorder } from "../backup/backup-progress";
import { BackupService } from "../backup/backup-service";
import { ReplayPauseMarkers } from "../cluster/replay-pause-markers";
import type { TopologyCollector } from "../cluster/topology-collector";
import type { ClusterStateStore } from "../failover/cluster-state";
import { publisherOf } from "../events/redis-pubsub";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import type { OsIdentity } from "../nodes/os-user";
import type { Credentials, TrustAnchors } from "../postgres/connection";
import { ROLE_REPLICATION } from "../postgres/managed-settings";
import { LeaderRole, RedisLease } from "../redis/redis-lease";
import type { Secrets } from "../secrets/secrets-store";
import type { Repository } from "../storage/repository";
import { openClusterRepositories, type RepositorySet } from "../storage/repository-set";
import { retentionOf } from "../config/repository-config";
import { BackupLocks } from "../storage/backup-locks";
import { ArchiveMonitor } from "../wal/archive-monitor";
import { ArchiveGaps } from "../wal/archive-gaps";
import { WalArchiver } from "../wal/wal-archiver";
import { walSummarizerFor, type WalSummarizer } from "../wal/wal-summary";
import { WalPusher } from "../wal/wal-pusher";
import { PushHealth } from "../wal/push-health";
import { pushedArchiveIdentity } from "../wal/archive-identity";
import type { StartContext } from "./cleanups";
import type { RedisAndEvents } from "./redis-and-events";

export interface Storage {
  /** PostgreSQL's OS user (see openRepository). */
  readonly pgIdentity: OsIdentity | null;
  /** Every configured repository (RELEVO_REPO<n>_), opened: the WAL archive goes to each. */
  readonly repositories: RepositorySet;
  /**
   * The lowest-numbered repository (repositories.first): what is decided
   * per repository by nature and not yet over the set reads it.
   */
  readonly repository: Repository;
}

/** The backup repositories, the WAL spool owned by PostgreSQL's OS user, the backups' locks in Redis. */
export async function openRepository(
  options: StartContext & { readonly driver: NodeDriver; readonly redis: RedisAndEvents },
): Promise<Storage> {
  const { config, driver, redis, logger, cleanups } = options;
  // The OS user that owns PostgreSQL's files, and so the WAL archive restore_command reads
  // (the image's postgres uid for containers, whatever this machine's is).
  const pgIdentity = await driver.fileOwner();
  const locks = new BackupLocks(redis.client, redis.keys, { ttlMs: config.leaseTtlMs, logger });
  // Each opened with its keys when its RELEVO_REPO<n>_CIPHER_PASS is set (made on an empty repository): see open-repository.
  const repositories = await openClusterRepositories(config, { walOwner: pgIdentity, locks, create: true, logger });
  // After everything that writes to them has stopped (cleanups run last first): S3 stores' uploads end, then their connections.
  cleanups.push(() => repositories.close());
  return { pgIdentity, repositories, repository: repositories.first.repository };
}

/** One repository's share of the archive: the pusher that puts the spool's WAL into it, and whether it reaches it. */
export interface RepositoryPush {
  readonly index: number;
  readonly repository: Repository;
  /** The received files it refuses are named in the cluster's health. */
  readonly pusher: WalPusher;
  /** Whether the pusher reaches the repository (its reason in the cluster's health while it has not for a while). */
  readonly health: PushHealth;
}

export interface WalArchive {
  readonly archiver: WalArchiver;
  /** A pusher per repository, lowest number first, each over the one spool. */
  readonly pushes: readonly RepositoryPush[];
  /** The archive's gaps, kept in Redis for every instance (for events once, and the cluster's health). */
  readonly gaps: ArchiveGaps;
  readonly walSummarizer: WalSummarizer;
}

/** How often the pusher looks for WAL received and not yet in the repository: a backup waits for its last segment's push. */
const WAL_PUSH_INTERVAL_MS = 200;

/** The WAL archiver, its pusher and summarizer, run by whichever service instance holds their lease. */
export function startWalArchiver(
  options: StartContext & {
    readonly secrets: Secrets;
    readonly trustedCa: TrustAnchors;
    /** The CA's certificate file on this host, for pg_receivewal. */
    readonly caFile: string;
    readonly redis: RedisAndEvents;
    readonly storage: Storage;
    readonly superuser: Credentials;
  },
): WalArchive {
  const { config, logger, cleanups, secrets, trustedCa, caFile, redis, storage, superuser } = options;
  const gaps = new ArchiveGaps(redis.client, redis.keys.archiveGaps, redis.events);
  const { repositories } = storage;
  const archiver = new WalArchiver({
    repository: repositories.first.repository,
    // The hold slot and the spool keep what any repository lacks (see pushedEverywhere).
    repositories: repositories.repositories,
    pgBinDir: config.pgBinDir,
    identity: storage.pgIdentity,
    superuser,
    replication: { user: ROLE_REPLICATION, password: secrets.replicationPassword, database: "replication", trustedCa },
    caFile,
    nodeTimeoutMs: config.nodeTimeoutMs,
    events: redis.events,
    gaps,
    logger,
    spoolMaxBytes: config.walSpoolMax,
  });
  // Summaries go to the lowest-numbered repository: they describe the cluster's WAL, not a repository's, and backups
  // into any repository read them there (see docs/repositories.md).
  const walSummarizer = walSummarizerFor(repositories.first.repository, config, logger);
  // One pusher per repository over the one spool, each at its own pace: a slow or unreachable one delays none of the
  // others (the spool and the primary keep what it lacks, see WalArchiver's pushedEverywhere).
  const pushes = repositories.members.map(({ index, repository }): RepositoryPush => {
    // Whether the pusher reaches the repository: an event and a health reason when it has not for a while.
    const health = new PushHealth({
      repository: repository.location,
      events: redis.events,
      logger,
      store: { redis: redis.client, key: redis.keys.archivePush, index },
    });
    const pusher = new WalPusher({
      source: repository.spool,
      objects: repository.objects,
      generation: repository.generation,
      index: repository.archive,
      archiveKey: () => repository.archiveKey(),
      archiveIdentity: async () => (await pushedArchiveIdentity(repository))?.systemIdentifier ?? null,
      primaryHistory: () => archiver.preparedHistory,
      events: redis.events,
      logger: logger.child({ repository: index }),
      intervalMs: WAL_PUSH_INTERVAL_MS,
      parallelism: config.backupParallelism,
      onPass: (pass) => health.observe(pass),
    });
    return { index, repository, pusher, health };
  });
  // One archiver across service instances (a slot serves one receiver at a time anyway).
  const archiverRole = new LeaderRole(
    new RedisLease(redis.client, redis.keys.leases.walArchiver, config.leaseTtlMs, redis.instanceId),
    {
      name: "wal-archiver",
      start: () => {
        archiver.start();
        for (const { pusher } of pushes) pusher.start();
        walSummarizer.start();
      },
      stop: async () => {
        await walSummarizer.stop();
        await archiver.stop();
        await Promise.all(pushes.map(({ pusher }) => pusher.stop()));
      },
    },
    config.leaseTtlMs,
    logger,
  );
  archiverRole.start();
  cleanups.push(() => archiverRole.stop());
  return { archiver, pushes, gaps, walSummarizer };
}

export interface Backups {
  readonly backups: BackupService;
  readonly archiveMonitor: ArchiveMonitor;
}

/** The backup service (one backup at a time across instances) and the monitor that raises an archive falling behind. */
export function startBackups(
  options: StartContext & {
    readonly driver: NodeDriver;
    readonly redis: RedisAndEvents;
    readonly nodes: readonly NodeRef[];
    readonly storage: Storage;
    readonly archive: WalArchive;
    readonly superuser: Credentials;
    readonly collector: TopologyCollector;
    /** The recorded cluster state: which replicas a failover would promote. */
    readonly clusterState: ClusterStateStore;
  },
): Backups {
  const { config, logger, cleanups, driver, redis, nodes, storage, archive, superuser, collector, clusterState } = options;
  const { repositories, repository } = storage;
  const backups = new BackupService({
    clusterName: config.clusterName,
    summarizer: archive.walSummarizer,
    maxSlotWalKeepSize: config.maxSlotWalKeepSize,
    driver,
    repositories,
    repository,
    backupRepository: config.backupRepo,
    archiver: archive.archiver,
    superuser,
    events: redis.events,
    logger,
    compression: config.backupCompression,
    parallelism: config.backupParallelism,
    archiveTimeoutMs: config.archiveTimeoutMs,
    startTimeoutMs: config.startTimeoutMs,
    host: config.host,
    // Each repository by its own rule (RELEVO_REPO<n>_RETENTION_FULL / _DAYS), the cluster's count by default.
    retention: (member) => retentionOf(member.settings, config.retentionFull),
    topology: () => collector.latest,
    nodes,
    sourcePolicy: config.backupSource,
    progress: new BackupProgressRecorder(redis.client, redis.keys, publisherOf(redis.pubSub)),
    maxSourceLagBytes: config.lagAlertBytes,
    lease: new RedisLease(redis.client, redis.keys.leases.backup, config.leaseTtlMs, redis.instanceId),
    failoverEligibility: async () => ({
      synchronous: config.synchronous,
      eligible: (await clusterState.read())?.eligible ?? [],
      maximumLagBytes: config.failoverMaximumLagBytes,
    }),
    pauseMarker: new ReplayPauseMarkers(redis.client, redis.keys),
  });
  cleanups.push(() => backups.waitForIdle());

  const archiveMonitor = new ArchiveMonitor({
    backups,
    events: redis.events,
    gaps: archive.gaps,
    archives: repositories.members.map(({ index, repository: member }) => ({ index, archive: member.archive })),
    logger,
    topology: () => collector.latest,
    intervalMs: config.archiveCheckIntervalMs,
    maxLagBytes: config.archiveMaxLagBytes,
  });
  archiveMonitor.start();
  cleanups.push(() => archiveMonitor.stop());
  return { backups, archiveMonitor };
}
