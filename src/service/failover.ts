import { ReplayPauseMarkers } from "../cluster/replay-pause-markers";
import { ReplayPauseWatch } from "../cluster/replay-pause-watch";
import { OperationJournal } from "../failover/operation-journal";
import { FailoverOperations } from "../failover/operations";
import { FailoverService } from "../failover/failover-service";
import type { NodeDriver } from "../nodes/node-driver";
import { RedisLease } from "../redis/redis-lease";
import type { Secrets } from "../secrets/secrets-store";
import type { RepositorySet } from "../storage/repository-set";
import type { ArchivedWalSet } from "../wal/archived-wal-set";
import type { StartContext } from "./cleanups";
import { WalFeeder } from "../restore/wal-feeder";
import { repositoryWalSource } from "../restore/wal-source";
import type { BootstrappedCluster, Members, Topology } from "./nodes-and-topology";
import type { RedisAndEvents } from "./redis-and-events";

/**
 * Failover: the recorded cluster state reconciled with the cluster as
 * bootstrap found it (see FailoverService.reconcile), then the monitor,
 * which runs in whichever instance holds its lease, and the replay pause
 * watch, which acts in that instance too.
 */
export async function startFailover(
  options: StartContext & {
    readonly driver: NodeDriver;
    readonly secrets: Secrets;
    readonly redis: RedisAndEvents;
    readonly members: Members;
    readonly cluster: BootstrappedCluster;
    readonly topology: Topology;
    /** The WAL archive (every repository's) a replica whose slot was lost may catch up from. */
    readonly repositories: RepositorySet;
    /** Every repository's archived WAL as one, the archiver's (a set-aside a repository missed is owed it there). */
    readonly archivedWal: ArchivedWalSet;
  },
): Promise<FailoverService> {
  const { config, logger, cleanups, driver, secrets, redis, members, cluster, topology, repositories } = options;
  // Set aside and histories added in every repository; names from any (see ArchivedWalSet).
  const archive = options.archivedWal;
  const repository = repositories.first.repository;
  const { client, keys, instanceId, events } = redis;
  const { collector } = topology;
  const journal = new OperationJournal(client, keys.operation, config.leaseTtlMs, instanceId, logger);
  const operations = new FailoverOperations({
    config,
    membership: members.membership,
    driver,
    secrets,
    superuser: cluster.superuser,
    redis: client,
    keys,
    store: cluster.store,
    journal,
    events,
    logger,
    bootstrap: cluster.bootstrap,
    archive,
    refreshTopology: () => collector.pollNow(),
  });
  const failover = new FailoverService({
    redis: client,
    keys,
    nodes: members.nodes,
    store: cluster.store,
    journal,
    operations,
    events,
    logger,
    lease: new RedisLease(client, keys.leases.failoverMonitor, config.leaseTtlMs, instanceId),
    leaseTtlMs: config.leaseTtlMs,
    database: topology.database,
    monitor: {
      config,
      driver,
      superuser: cluster.superuser,
      topology: () => collector.latest,
      archive: {
        feed: (node, from) =>
          WalFeeder.open({
            driver,
            node,
            source: repositoryWalSource(repository, repository.spool),
            logger,
            mode: "standby",
            timeline: "latest",
            from,
            parallel: Math.max(2, Math.min(config.backupParallelism, 8)),
          }),
        // Complete in the first repository (the WAL the feed reads): see repositoryWalSource.
        segments: async () => new Set([...(await repository.archivedSegments()).values()].flatMap((segments) => [...segments])),
      },
    },
  });
  await failover.reconcile({
    snapshot: collector.latest,
    initialised: cluster.outcomes.some((outcome) => outcome.phase === "initialized"),
  });
  failover.start();
  cleanups.push(() => failover.stop());
  const replayPauseWatch = new ReplayPauseWatch({
    nodes: members.nodes,
    superuser: cluster.superuser,
    redis: client,
    maintenanceKey: keys.maintenance,
    markers: new ReplayPauseMarkers(client, keys),
    events,
    logger,
    topology: () => collector.latest,
    leading: () => failover.leading,
    intervalMs: config.topologyPollIntervalMs,
    nodeTimeoutMs: config.nodeTimeoutMs,
  });
  replayPauseWatch.start();
  cleanups.push(() => replayPauseWatch.stop());
  return failover;
}
