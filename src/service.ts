import { startApiServer, type RunningApi } from "./api/server";
import { bootstrapCluster, type NodeBootstrapOutcome } from "./cluster/bootstrap";
import { Membership } from "./cluster/membership";
import { APP_DATABASE, ROLE_APP, ROLE_REPLICATION, ROLE_SUPERUSER } from "./postgres/managed-settings";
import { BackupService } from "./backup/backup-service";
import { BackupScheduler } from "./scheduler/backup-scheduler";
import { ArchiveMonitor } from "./wal/archive-monitor";
import { BackupProgressRecorder } from "./backup/backup-progress";
import { Repository } from "./storage/repository";
import { ensureArchiveSlot, WalArchiver } from "./wal/wal-archiver";
import { walSummarizerFor, type WalSummarizer } from "./wal/wal-summary";
import { repositorySeeder, seededFrom } from "./restore/replica-seed";
import { assertPortFree } from "./util/ports";
import { TopologyCollector } from "./cluster/topology-collector";
import { TopologyReader } from "./cluster/topology-reader";
import type { RelevoConfig } from "./config/config";
import { PrimaryDatabase } from "./db/primary-database";
import { UnreachableCaseError } from "./errors";
import { Consolidator } from "./events/consolidator";
import { EventLog } from "./events/event-log";
import type { EventDraft } from "./events/event-map";
import { CONSOLIDATOR_GROUP, redisKeys, type RedisKeys } from "./redis/keys";
import { createRedisPubSub, publisherOf } from "./events/redis-pubsub";
import type { Logger } from "./log";
import { createNodeDriver } from "./nodes/create-driver";
import type { NodeDriver, NodeRef } from "./nodes/node-driver";
import { createRedisClient, parseRedisUrl } from "./redis/redis-client";
import { ensureRedisServer, requireExternalRedis, type RedisServerHandle } from "./redis/redis-server";
import { loadOrCreateSecrets, type Secrets } from "./secrets/secrets-store";
import { mintToken, TokenVerifier } from "./secrets/tokens";
import type Redis from "ioredis";
import { readFileSync } from "node:fs";
import { randomUUID } from "node:crypto";
import os from "node:os";
import { LeaderRole, RedisLease } from "./redis/redis-lease";
import path from "node:path";
import { projectRoot } from "./util/project-root";
import { ClusterStateStore } from "./failover/cluster-state";
import { OperationJournal } from "./failover/operation-journal";
import { FailoverOperations } from "./failover/operations";
import { FailoverService } from "./failover/failover-service";

export interface RelevoService {
  readonly apiUrl: string;
  readonly operatorToken: string;
  readonly nodes: readonly NodeRef[];
  readonly driver: NodeDriver;
  readonly secrets: Secrets;
  readonly keys: RedisKeys;
  readonly redis: Redis;
  readonly events: EventLog;
  readonly collector: TopologyCollector;
  readonly database: PrimaryDatabase;
  readonly consolidator: Consolidator;
  readonly repository: Repository;
  readonly archiver: WalArchiver;
  readonly walSummarizer: WalSummarizer;
  readonly backups: BackupService;
  readonly scheduler: BackupScheduler;
  readonly archiveMonitor: ArchiveMonitor;
  readonly failover: FailoverService;
  readonly outcomes: readonly NodeBootstrapOutcome[];
  /** Stops the API, the collector, the consolidator and (unless told) Redis and every node. */
  stop(options?: { reason?: string; keepNodes?: boolean; keepRedis?: boolean }): Promise<void>;
}

/** How far back events are consolidated again on a new primary (an asynchronous primary may have died before they reached its replica). */
const RECONSOLIDATE_WINDOW_MS = 5 * 60 * 1000;

const RELEVO_VERSION: string = (JSON.parse(readFileSync(path.join(projectRoot(), "package.json"), "utf8")) as { version: string }).version;

/**
 * The composition root: starts everything in dependency order and, when a
 * step fails, stops what the earlier steps started, so a failed start leaves
 * nothing running.
 */
export async function startRelevo(config: RelevoConfig, logger: Logger): Promise<RelevoService> {
  const cleanups: Array<() => Promise<void>> = [];
  const unwind = async (): Promise<void> => {
    for (const cleanup of cleanups.reverse())
      await cleanup().catch((error) => logger.warn({ err: (error as Error).message }, "cleanup step failed"));
    cleanups.length = 0;
  };
  try {
    const driver = createNodeDriver(config);
    // Last of the cleanups: the driver's open connections (the Docker driver's file agents).
    cleanups.push(() => driver.close());
    await driver.checkPrerequisites();
    const secrets = await loadOrCreateSecrets(config.home);
    await assertPortFree(config.host, config.apiPort, "the API", "RELEVO_API_PORT");
    // Relevo's own Redis, or one run by someone else (RELEVO_REDIS_URL), which it then neither starts nor stops.
    const endpoint = config.redisUrl
      ? parseRedisUrl(config.redisUrl)
      : { host: config.host, port: config.redisPort, password: secrets.redisPassword };
    const redisServer: RedisServerHandle = config.redisUrl
      ? await requireExternalRedis(endpoint, config.startTimeoutMs, logger)
      : await ensureRedisServer({
          home: config.home,
          host: config.host,
          port: config.redisPort,
          password: secrets.redisPassword,
          bin: config.redisServerBin,
          startTimeoutMs: config.startTimeoutMs,
          logger,
        });
    const stopRedis = (): Promise<void> => redisServer.stop();
    cleanups.push(stopRedis);

    const redis = createRedisClient(endpoint, { name: "commands" });
    const blockingRedis = createRedisClient(endpoint, { name: "consolidator", blocking: true });
    const subscriberRedis = createRedisClient(endpoint, { name: "subscriber", queueWhileOffline: true });
    const invalidationRedis = createRedisClient(endpoint, { name: "invalidations", queueWhileOffline: true });
    cleanups.push(async () => {
      for (const client of [redis, blockingRedis, subscriberRedis, invalidationRedis]) client.disconnect();
    });
    await redis.ping().catch(() => undefined);
    const keys = redisKeys(config.clusterName);
    // Names this process in the leases it holds.
    const instanceId = `${os.hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
    const pubSub = createRedisPubSub(redis, subscriberRedis);
    const events = new EventLog(redis, keys, publisherOf(pubSub), config.eventsMaxLength, logger);

    const membership = await Membership.load(config);
    const nodes = membership.nodes;
    // Another instance on this home may add or remove a replica: follow its record.
    const membershipTimer = setInterval(() => {
      membership.refresh().catch((error: Error) => logger.warn({ err: error.message }, "membership not re-read"));
    }, config.topologyPollIntervalMs);
    membershipTimer.unref();
    cleanups.push(async () => clearInterval(membershipTimer));
    const stopNodes = async (): Promise<void> => {
      for (const node of [...nodes].reverse()) await driver.stop(node, { mode: "fast", timeoutMs: 60000 });
      // Then, best effort, what the driver kept beside them (a failure here must not leave a node running).
      for (const node of nodes) {
        await driver
          .releaseHelpers(node)
          .catch((error: Error) => logger.warn({ node: node.name, err: error.message }, "the node's helpers were not removed"));
      }
    };
    cleanups.push(stopNodes);
    // The OS user that owns PostgreSQL's files, and so the WAL archive restore_command reads
    // (the image's postgres uid for containers, whatever this machine's is).
    const pgIdentity = await driver.fileOwner();
    const repository = new Repository(config.repository, pgIdentity);
    await repository.ensure();
    const store = new ClusterStateStore(redis, keys.clusterState);
    const recordedFences = new Set((await store.read().catch(() => null))?.fenced ?? []);
    const bootstrapDeps = {
      config,
      driver,
      secrets,
      logger,
      seedFromRepository: repositorySeeder(config, { driver, repository, secrets, logger }),
      fenced: recordedFences,
    };
    const outcomes = await bootstrapCluster(bootstrapDeps, nodes);
    const superuser = { user: ROLE_SUPERUSER, password: secrets.superuserPassword, database: "postgres" };
    // A primary made just now gets the archiver's slot before the service
    // answers, so WAL is kept from here on for the archiver (the leader of the
    // instances), whenever it comes to stream it. Best effort: the archiver
    // makes the slot itself too.
    const initialized = outcomes.find((outcome) => outcome.phase === "initialized");
    if (initialized) {
      await ensureArchiveSlot(initialized.node, superuser, config.nodeTimeoutMs).catch((error: Error) =>
        logger.warn({ node: initialized.node.name, err: error.message }, "the archiver's slot is left to the archiver"),
      );
    }
    for (const outcome of outcomes) {
      const event = outcomeEvent(outcome);
      if (event) await events.emit(event);
    }

    const archiver = new WalArchiver({
      repository,
      pgBinDir: config.pgBinDir,
      identity: pgIdentity,
      superuser,
      replication: { user: ROLE_REPLICATION, password: secrets.replicationPassword, database: "replication" },
      nodeTimeoutMs: config.nodeTimeoutMs,
      events,
      logger,
    });
    const walSummarizer = walSummarizerFor(repository, config, logger);
    // One archiver across service instances (a slot serves one receiver at a time anyway).
    const archiverRole = new LeaderRole(
      new RedisLease(redis, keys.leases.walArchiver, config.leaseTtlMs, instanceId),
      {
        name: "wal-archiver",
        start: () => {
          archiver.start();
          walSummarizer.start();
        },
        stop: async () => {
          await walSummarizer.stop();
          await archiver.stop();
        },
      },
      config.leaseTtlMs,
      logger,
    );
    archiverRole.start();
    cleanups.push(() => archiverRole.stop());

    // Set once the consolidator exists: a new primary gets the last minutes of events again.
    let replayRecentEvents: ((windowMs: number) => void) | null = null;
    const database = new PrimaryDatabase(
      { user: ROLE_APP, password: secrets.appPassword, database: APP_DATABASE },
      config.nodeTimeoutMs,
      logger,
    );
    cleanups.push(() => database.close());
    const collector = new TopologyCollector({
      clusterName: config.clusterName,
      nodes,
      driver,
      credentials: superuser,
      redis,
      keys,
      publisher: publisherOf(pubSub),
      events,
      logger,
      pollIntervalMs: config.topologyPollIntervalMs,
      nodeTimeoutMs: config.nodeTimeoutMs,
      lagAlertBytes: config.lagAlertBytes,
      onPrimary: async (primary) => {
        archiver.follow(primary);
        await database.follow(primary);
        if (primary) replayRecentEvents?.(RECONSOLIDATE_WINDOW_MS);
      },
    });
    collector.start();
    cleanups.push(() => collector.stop());
    await collector.pollNow();

    const backups = new BackupService({
      clusterName: config.clusterName,
      summarizer: walSummarizer,
      maxSlotWalKeepSize: config.maxSlotWalKeepSize,
      driver,
      repository,
      archiver,
      superuser,
      events,
      logger,
      compression: config.backupCompression,
      parallelism: config.backupParallelism,
      archiveTimeoutMs: config.archiveTimeoutMs,
      startTimeoutMs: config.startTimeoutMs,
      host: config.host,
      retentionFull: config.retentionFull,
      topology: () => collector.latest,
      nodes,
      sourcePolicy: config.backupSource,
      progress: new BackupProgressRecorder(redis, keys, publisherOf(pubSub)),
      maxSourceLagBytes: config.lagAlertBytes,
      lease: new RedisLease(redis, keys.leases.backup, config.leaseTtlMs, instanceId),
    });
    cleanups.push(() => backups.waitForIdle());

    const archiveMonitor = new ArchiveMonitor({
      backups,
      events,
      logger,
      topology: () => collector.latest,
      intervalMs: config.archiveCheckIntervalMs,
      maxLagBytes: config.archiveMaxLagBytes,
    });
    archiveMonitor.start();
    cleanups.push(async () => archiveMonitor.stop());

    const agendaRedis = createRedisClient(endpoint, { name: "agenda", queueWhileOffline: true });
    cleanups.push(async () => agendaRedis.disconnect());
    const scheduler = new BackupScheduler({
      redis: agendaRedis,
      keys: keys.agenda,
      backups,
      events,
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

    const journal = new OperationJournal(redis, keys.operation, config.leaseTtlMs, instanceId, logger);
    const operations = new FailoverOperations({
      config,
      membership,
      driver,
      secrets,
      superuser,
      redis,
      keys,
      store,
      journal,
      events,
      logger,
      bootstrap: bootstrapDeps,
      refreshTopology: () => collector.pollNow(),
    });
    const failover = new FailoverService({
      redis,
      keys,
      nodes,
      store,
      journal,
      operations,
      events,
      logger,
      lease: new RedisLease(redis, keys.leases.failoverMonitor, config.leaseTtlMs, instanceId),
      leaseTtlMs: config.leaseTtlMs,
      database,
      monitor: { config, driver, superuser, topology: () => collector.latest },
    });
    await failover.reconcile(
      collector.latest,
      outcomes.some((outcome) => outcome.phase === "initialized"),
    );
    failover.start();
    cleanups.push(() => failover.stop());

    const consolidator = new Consolidator(blockingRedis, keys, database, logger);
    consolidator.start();
    replayRecentEvents = (windowMs) => consolidator.replayRecent(windowMs);
    cleanups.push(() => consolidator.stop());

    const topology = new TopologyReader(redis, invalidationRedis, keys, logger);
    await topology.start();
    const api: RunningApi = await startApiServer(
      {
        redis,
        keys,
        events,
        collector,
        topology,
        tokens: new TokenVerifier(secrets.tokenKey),
        logger,
        backups,
        nodes,
        scheduler,
        failover,
      },
      pubSub,
      { host: config.host, port: config.apiPort, maxDepth: config.apiMaxDepth, maxComplexity: config.apiMaxComplexity },
    );
    cleanups.push(() => api.stop());
    await events.emit({
      kind: "service:started",
      severity: "info",
      node: null,
      message: `Relevo ${RELEVO_VERSION} started (pid ${process.pid}, ${driver.kind} driver)`,
      data: { version: RELEVO_VERSION, pid: process.pid, driver: driver.kind },
    });

    let stopping: Promise<void> | null = null;
    return {
      apiUrl: api.url,
      operatorToken: mintToken(secrets.tokenKey, "operator"),
      nodes,
      driver,
      secrets,
      keys,
      redis,
      events,
      collector,
      database,
      consolidator,
      repository,
      archiver,
      walSummarizer,
      backups,
      scheduler,
      archiveMonitor,
      failover,
      outcomes,
      stop: (options = {}) => {
        stopping ??= (async () => {
          await events.emit({
            kind: "service:stopping",
            severity: "info",
            node: null,
            message: `Relevo stopping: ${options.reason ?? "requested"}`,
            data: { reason: options.reason ?? "requested" },
          });
          await api.stop();
          await collector.stop();
          await drainConsolidator(consolidator, redis, keys);
          if (options.keepNodes) cleanups.splice(cleanups.indexOf(stopNodes), 1);
          if (options.keepRedis) cleanups.splice(cleanups.indexOf(stopRedis), 1);
          await unwind();
        })();
        return stopping;
      },
    };
  } catch (error) {
    await unwind();
    throw error;
  }
}

/** Gives the consolidator a moment to write what is pending before the service stops. */
async function drainConsolidator(consolidator: Consolidator, redis: Redis, keys: RedisKeys): Promise<void> {
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline) {
    const pending = (await redis.xpending(keys.events, CONSOLIDATOR_GROUP).catch(() => [0])) as [number, ...unknown[]];
    const lag = await groupLag(redis, keys);
    if (Number(pending[0]) === 0 && lag === 0) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  await consolidator.stop();
}

async function groupLag(redis: Redis, keys: RedisKeys): Promise<number> {
  try {
    const groups = (await redis.call("XINFO", "GROUPS", keys.events)) as Array<Array<string | number | null>>;
    for (const group of groups) {
      const fields = new Map<string, unknown>();
      for (let i = 0; i < group.length; i += 2) fields.set(String(group[i]), group[i + 1]);
      if (fields.get("name") === CONSOLIDATOR_GROUP) return Number(fields.get("lag") ?? 0);
    }
  } catch {
    // no group yet, or Redis away
  }
  return 0;
}

function outcomeEvent(outcome: NodeBootstrapOutcome): EventDraft | null {
  const node = outcome.node.name;
  switch (outcome.phase) {
    case "initialized":
      return {
        kind: "node:created",
        severity: "info",
        node,
        message: `${node} initialised as the primary`,
        data: { role: "primary", upstream: null },
      };
    case "seeded":
      return {
        kind: "node:created",
        severity: "info",
        node,
        message: `${node} ${seededFrom(outcome)}`,
        data: { role: "replica", upstream: outcome.upstream },
      };
    case "started":
      return { kind: "node:started", severity: "info", node, message: `${node} started`, data: {} };
    case "already-running":
      return null;
    case "fenced":
      return {
        kind: "node:fenced",
        severity: "warning",
        node,
        message: `${node} is fenced: left stopped until it rejoins as a replica`,
        data: { method: "already-stopped", reason: "fenced before this start" },
      };
    default:
      throw new UnreachableCaseError(outcome);
  }
}
