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
import { openClusterRepositories, repositoryOpener, type NumberedRepository, type RepositorySet } from "../storage/repository-set";
import { readRecordedIdentity } from "../cluster/cluster-identity";
import { describeRepository } from "../config/repository-config";
import { retentionOf } from "../config/repository-config";
import { BackupLocks } from "../storage/backup-locks";
import { ArchiveMonitor } from "../wal/archive-monitor";
import { ArchiveGaps } from "../wal/archive-gaps";
import { WalArchiver } from "../wal/wal-archiver";
import { ArchivedWalSet } from "../wal/archived-wal-set";
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

/**
 * The backup repositories, the WAL spool owned by PostgreSQL's OS user, the
 * backups' locks in Redis. On a data home that knows its cluster (not a
 * first start, not --new-cluster, which must read and start over every
 * repository), a repository other than the first whose store does not
 * answer is pending: an event says so, and it is opened in the background.
 */
export async function openRepository(
  options: StartContext & { readonly driver: NodeDriver; readonly redis: RedisAndEvents; readonly newCluster: boolean },
): Promise<Storage> {
  const { config, driver, redis, logger, cleanups } = options;
  // The OS user that owns PostgreSQL's files, and so the WAL archive restore_command reads
  // (the image's postgres uid for containers, whatever this machine's is).
  const pgIdentity = await driver.fileOwner();
  const locks = new BackupLocks(redis.client, redis.keys, { ttlMs: config.leaseTtlMs, logger });
  const known = await readRecordedIdentity(config.home);
  const opening = { walOwner: pgIdentity, locks, create: true, logger };
  // Each opened with its keys when its RELEVO_REPO<n>_CIPHER_PASS is set (made on an empty repository): see open-repository.
  const repositories = await openClusterRepositories(config, { ...opening, pendingWhenUnreachable: known !== null && !options.newCluster });
  // After everything that writes to them has stopped (cleanups run last first): S3 stores' uploads end, then their connections.
  cleanups.push(() => repositories.close());
  for (const pending of repositories.pending) {
    await redis.events.emit({
      kind: "repository:pending",
      severity: "warning",
      node: null,
      message: `${describeRepository(pending.settings)} does not answer (${pending.error}): the service runs without it, keeps the WAL it lacks, and opens it when it answers`,
      data: { repository: pending.index, error: pending.error },
    });
  }
  if (repositories.pending.length > 0) cleanups.push(openPendingInBackground(repositories, { ...options, opening, known }));
  return { pgIdentity, repositories, repository: repositories.first.repository };
}

/** How often a pending repository is tried again. */
const PENDING_RETRY_MS = 15_000;

/**
 * Tries the pending repositories every PENDING_RETRY_MS until none is
 * left: one that opens joins the set (its pusher starts, see
 * startWalArchiver), gets the cluster's identity in its descriptor, and
 * `repository:opened` says so. Returns its stop.
 */
function openPendingInBackground(
  repositories: RepositorySet,
  options: StartContext & {
    readonly redis: RedisAndEvents;
    readonly opening: Parameters<typeof repositoryOpener>[1];
    readonly known: { readonly systemIdentifier: string } | null;
  },
): () => Promise<void> {
  const { config, logger, redis, known } = options;
  const open = repositoryOpener(config, options.opening);
  let timer: NodeJS.Timeout | null = null;
  let pass: Promise<void> | null = null;
  const tick = (): void => {
    pass = (async () => {
      for (const member of await repositories.openPending(open)) {
        if (known) {
          await member.repository
            .recordSystemIdentifier(known.systemIdentifier)
            .catch((error: Error) =>
              logger.warn({ repository: member.index, err: error.message }, "repository.json not given the cluster's identity"),
            );
        }
        logger.info(
          { repository: member.index, location: member.repository.location },
          "a pending repository opened: WAL and copies go to it",
        );
        await redis.events.emit({
          kind: "repository:opened",
          severity: "info",
          node: null,
          message: `${describeRepository(member.settings)} answers again: it is opened, and the WAL and backups it lacks go to it`,
          data: { repository: member.index },
        });
      }
    })()
      .catch((error: Error) => logger.warn({ err: error.message }, "pending repositories not tried"))
      .finally(() => {
        pass = null;
        if (timer !== null && repositories.pending.length > 0) timer = setTimeout(tick, PENDING_RETRY_MS);
      });
  };
  timer = setTimeout(tick, PENDING_RETRY_MS);
  return async () => {
    if (timer) clearTimeout(timer);
    timer = null;
    await pass;
  };
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
  /** Every repository's archived WAL as one (failover sets aside and adds histories through it). */
  readonly archivedWal: ArchivedWalSet;
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
  // The repositories' archived WAL as one, shared by the archiver, the pushers and failover (see ArchivedWalSet).
  const archivedWal = new ArchivedWalSet(() => repositories.repositories.map((member) => member.archivedWal));
  const archiver = new WalArchiver({
    archivedWal,
    repository: repositories.first.repository,
    // The hold slot and the spool keep what any repository lacks (see pushedEverywhere).
    repositories: { opened: () => repositories.repositories, pending: () => repositories.pending.length },
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
  // others (the spool and the primary keep what it lacks, see WalArchiver's pushedEverywhere). A pending repository
  // gets its pusher when it joins, started at once while this instance runs the archiver.
  const pushes: RepositoryPush[] = [];
  let archiving = false;
  const pushTo = ({ index, repository }: NumberedRepository): RepositoryPush => {
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
      // Nothing put while the repository is owed a set-aside of an abandoned branch (it was down when it was done).
      paused: () => archivedWal.owes(repository.archivedWal),
    });
    const push = { index, repository, pusher, health };
    pushes.push(push);
    pushes.sort((a, b) => a.index - b.index);
    return push;
  };
  for (const member of repositories.members) pushTo(member);
  repositories.onJoined((member) => {
    const push = pushTo(member);
    if (archiving) push.pusher.start();
  });
  // One archiver across service instances (a slot serves one receiver at a time anyway).
  const archiverRole = new LeaderRole(
    new RedisLease(redis.client, redis.keys.leases.walArchiver, config.leaseTtlMs, redis.instanceId),
    {
      name: "wal-archiver",
      start: () => {
        archiving = true;
        archiver.start();
        for (const { pusher } of pushes) pusher.start();
        walSummarizer.start();
      },
      stop: async () => {
        archiving = false;
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
  return { archiver, pushes, gaps, walSummarizer, archivedWal };
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
    archives: () => repositories.members.map(({ index, repository: member }) => ({ index, archive: member.archive })),
    logger,
    topology: () => collector.latest,
    intervalMs: config.archiveCheckIntervalMs,
    maxLagBytes: config.archiveMaxLagBytes,
  });
  archiveMonitor.start();
  cleanups.push(() => archiveMonitor.stop());
  return { backups, archiveMonitor };
}
