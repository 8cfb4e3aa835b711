import type { RelevoConfig } from "../config/config";
import type { Logger } from "../log";
import { startApi } from "./api";
import { startCertificates } from "./certificates";
import { openRepository, startBackups, startWalArchiver } from "./backups-and-archive";
import { Cleanups, type StartContext } from "./cleanups";
import { startFailover } from "./failover";
import { bootstrapNodes, followMembership, startTopology } from "./nodes-and-topology";
import { checkPrerequisites } from "./prerequisites";
import { startConsolidator, startRedisAndEvents } from "./redis-and-events";
import { announceStarted, runningService, type RelevoService } from "./relevo-service";
import { startScheduler } from "./scheduler";
import { RepositoryReporter } from "../repository/repository-report";

/**
 * The composition root: starts everything in dependency order and, when a
 * step fails, stops what the earlier steps started, so a failed start leaves
 * nothing running. Each step pushes the cleanups of what it starts (see
 * Cleanups); a stop unwinds them in reverse (see stopService).
 */
export interface StartOptions {
  /**
   * relevo up --new-cluster: when no node has data although the data home
   * had a cluster, initialise a new, empty one (the old repository content
   * is set aside) instead of refusing.
   */
  readonly newCluster?: boolean;
}

export async function startRelevo(config: RelevoConfig, logger: Logger, options: StartOptions = {}): Promise<RelevoService> {
  const cleanups = new Cleanups(logger);
  const context: StartContext = { config, logger, cleanups };
  try {
    const { driver, secrets, ca, servicesCa } = await checkPrerequisites(context);
    const trustedCa = ca.trust;
    const redis = await startRedisAndEvents({ ...context, secrets, servicesCa });
    const members = await followMembership({ ...context, driver });
    const { nodes } = members;
    const storage = await openRepository({ ...context, driver, redis, newCluster: options.newCluster ?? false });
    const cluster = await bootstrapNodes({
      ...context,
      driver,
      secrets,
      trustedCa,
      redis,
      nodes,
      repositories: storage.repositories,
      newCluster: options.newCluster ?? false,
    });
    const { superuser } = cluster;
    const archive = startWalArchiver({ ...context, secrets, trustedCa, caFile: ca.authority.certificateFile, redis, storage, superuser });

    // Set once the consolidator exists: a new primary gets the last minutes of events again.
    let replayRecentEvents: ((windowMs: number) => void) | null = null;
    const topology = await startTopology({
      ...context,
      driver,
      secrets,
      trustedCa,
      redis,
      nodes,
      superuser,
      archiver: archive.archiver,
      pushes: archive.pushes,
      pendingRepositories: () => storage.repositories.pending,
      archiveGaps: archive.gaps,
      replayRecentEvents: (windowMs) => replayRecentEvents?.(windowMs),
    });
    const { collector } = topology;

    const { backups, archiveMonitor } = startBackups({
      ...context,
      driver,
      redis,
      nodes,
      storage,
      archive,
      superuser,
      collector,
      clusterState: cluster.store,
    });
    const scheduler = await startScheduler({ ...context, redis, backups, database: topology.database });
    const failover = await startFailover({
      ...context,
      driver,
      secrets,
      redis,
      members,
      cluster,
      topology,
      repositories: storage.repositories,
      archivedWal: archive.archivedWal,
    });
    const certificates = await startCertificates({ ...context, ca, servicesCa, driver, members, superuser, redis });
    const consolidator = startConsolidator({ ...context, redis, database: topology.database });
    replayRecentEvents = (windowMs) => consolidator.replayRecent(windowMs);
    const repositories = new RepositoryReporter({
      settings: config.repositories,
      clusterKeepFull: config.retentionFull,
      inUse: () => archive.pushes.map(({ index, repository: member, health }) => ({ index, repository: member, pushHealth: health })),
      pending: () => storage.repositories.pending,
      logger,
    });
    const api = await startApi({
      ...context,
      secrets,
      servicesCa,
      redis,
      nodes,
      collector,
      backups,
      repositories,
      scheduler,
      failover,
      certificates,
    });
    await announceStarted({ events: redis.events, driver });

    return runningService({
      cleanups,
      driver,
      secrets,
      ca,
      servicesCa,
      redis,
      members,
      storage,
      cluster,
      archive,
      topology,
      backups,
      archiveMonitor,
      scheduler,
      failover,
      certificates,
      consolidator,
      api,
    });
  } catch (error) {
    await cleanups.unwind();
    throw error;
  }
}
