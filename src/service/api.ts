import { startApiServer, type RunningApi } from "../api/server";
import { MAX_OPERATIONS_PER_SOCKET, MAX_PENDING_SOCKETS_PER_ADDRESS } from "../api/socket-admission";
import type { BackupService } from "../backup/backup-service";
import type { TopologyCollector } from "../cluster/topology-collector";
import { TopologyReader } from "../cluster/topology-reader";
import type { FailoverService } from "../failover/failover-service";
import type { NodeRef } from "../nodes/node-driver";
import type { BackupScheduler } from "../scheduler/backup-scheduler";
import type { Secrets } from "../secrets/secrets-store";
import { TokenAccess } from "../secrets/token-access";
import { caFiles } from "../tls/certificate-authority";
import type { StartContext } from "./cleanups";
import type { RedisAndEvents } from "./redis-and-events";

/** The GraphQL API, last: it answers only once everything it serves runs. */
export async function startApi(
  options: StartContext & {
    readonly secrets: Secrets;
    readonly redis: RedisAndEvents;
    readonly nodes: readonly NodeRef[];
    readonly collector: TopologyCollector;
    readonly backups: BackupService;
    readonly scheduler: BackupScheduler;
    readonly failover: FailoverService;
  },
): Promise<RunningApi> {
  const { config, logger, cleanups, redis, nodes, collector, backups, scheduler, failover } = options;
  const topology = new TopologyReader(redis.client, redis.invalidationClient, redis.keys, logger);
  await topology.start();
  const tokens = await TokenAccess.open({ home: config.home, logger });
  cleanups.push(() => tokens.close());
  const api = await startApiServer(
    {
      redis: redis.client,
      keys: redis.keys,
      events: redis.events,
      collector,
      topology,
      tokens,
      logger,
      backups,
      nodes,
      scheduler,
      failover,
      caFile: caFiles(config).certificateFile,
    },
    redis.pubSub,
    {
      host: config.host,
      port: config.apiPort,
      maxDepth: config.apiMaxDepth,
      maxComplexity: config.apiMaxComplexity,
      rateLimit: { perSecond: config.apiRateLimitPerSecond, burst: config.apiRateLimitBurst },
      refusalWindowMs: config.apiRefusalWindowMs,
      socketLimits: {
        maxSockets: config.apiMaxWebSockets,
        maxSocketsPerToken: config.apiMaxWebSocketsPerToken,
        maxPendingPerAddress: MAX_PENDING_SOCKETS_PER_ADDRESS,
        maxOperationsPerSocket: MAX_OPERATIONS_PER_SOCKET,
      },
    },
  );
  cleanups.push(() => api.stop());
  return api;
}
