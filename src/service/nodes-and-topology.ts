import { bootstrapCluster, findWritablePrimary, type BootstrapDeps, type NodeBootstrapOutcome } from "../cluster/bootstrap";
import { initialisationDecision, knownCluster, recordIdentity } from "../cluster/cluster-identity";
import { ErrorCode, RelevoError, UnreachableCaseError } from "../errors";
import { withNodeClient, type TrustAnchors } from "../postgres/connection";
import { readSystemIdentifier } from "../postgres/control-data";
import { Membership } from "../cluster/membership";
import { TopologyCollector } from "../cluster/topology-collector";
import { PrimaryDatabase } from "../db/primary-database";
import { ClusterStateStore, withName } from "../failover/cluster-state";
import { recordRebuiltCluster } from "../failover/rebuilt-cluster";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import type { Credentials } from "../postgres/connection";
import { APP_DATABASE, ROLE_APP, ROLE_SUPERUSER } from "../postgres/managed-settings";
import { publisherOf } from "../events/redis-pubsub";
import { repositorySeeder } from "../restore/replica-seed";
import { redisCall } from "../redis/redis-client";
import type { Secrets } from "../secrets/secrets-store";
import type { Repository } from "../storage/repository";
import type { PendingRepository, RepositorySet } from "../storage/repository-set";
import { describeRepository } from "../config/repository-config";
import { ensureArchiveSlot, type WalArchiver } from "../wal/wal-archiver";
import type { PushHealth } from "../wal/push-health";
import type { WalPusher } from "../wal/wal-pusher";
import type { ArchiveGaps } from "../wal/archive-gaps";
import { outcomeEvent } from "./bootstrap-events";
import type { Cleanup, StartContext } from "./cleanups";
import type { RedisAndEvents } from "./redis-and-events";

/** How far back events are consolidated again on a new primary (an asynchronous primary may have died before they reached its replica). */
const RECONSOLIDATE_WINDOW_MS = 5 * 60 * 1000;

export interface Members {
  readonly membership: Membership;
  /** One list shared by every component, changed in place when a replica is added or removed (see Membership). */
  readonly nodes: NodeRef[];
  /** Stops every node; a stop told to keep the nodes takes it out of the cleanups. */
  readonly stopNodes: Cleanup;
}

/** The cluster's members, followed as other instances on this home change them, and the nodes' stop among the cleanups. */
export async function followMembership(options: StartContext & { readonly driver: NodeDriver }): Promise<Members> {
  const { config, logger, cleanups, driver } = options;
  const membership = await Membership.load(config);
  const nodes = membership.nodes;
  // Another instance on this home may add or remove a replica: follow its record.
  const membershipTimer = setInterval(() => {
    membership.refresh().catch((error: Error) => logger.warn({ err: error.message }, "membership not re-read"));
  }, config.topologyPollIntervalMs);
  membershipTimer.unref();
  cleanups.push(() => clearInterval(membershipTimer));
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
  return { membership, nodes, stopNodes };
}

export interface BootstrappedCluster {
  readonly store: ClusterStateStore;
  /** What bootstrap was given, for failover to seed a replica again with. */
  readonly bootstrap: BootstrapDeps;
  readonly outcomes: readonly NodeBootstrapOutcome[];
  readonly superuser: Credentials;
}

/**
 * Every node initialised, seeded or started (fenced ones left stopped), a
 * new primary's archive slot made, the cluster's system identifier recorded
 * in the data home, and what was done recorded as events. A data home that
 * already had a cluster never gets a new, empty one: initialising is refused
 * unless `newCluster` says to start over.
 */
export async function bootstrapNodes(
  options: StartContext & {
    readonly driver: NodeDriver;
    readonly secrets: Secrets;
    readonly trustedCa: TrustAnchors;
    readonly redis: RedisAndEvents;
    readonly nodes: readonly NodeRef[];
    /** Every configured repository: a start-over starts each one's next generation, the cluster's identity goes to each. */
    readonly repositories: RepositorySet;
    /** relevo up --new-cluster: initialise although the data home had a cluster (the repository's next generation started). */
    readonly newCluster: boolean;
  },
): Promise<BootstrappedCluster> {
  const { config, logger, driver, secrets, trustedCa, redis, nodes, repositories } = options;
  const store = new ClusterStateStore(redis.client, redis.keys.clusterState);
  // Never "nothing recorded" for a read that failed: the recorded primary and fences decide what may start.
  const recorded = await redisCall("the cluster's recorded state", () => store.read());
  // Cleared when the cluster starts over: nothing recorded about the old cluster's nodes holds for the new one.
  const fenced = new Set(recorded?.fenced ?? []);
  let startedOver = false;
  const bootstrap: BootstrapDeps = {
    config,
    driver,
    secrets,
    trustedCa,
    logger,
    seedFromRepository: repositorySeeder(config, { driver, repositories, secrets, trustedCa, logger }),
    fenced,
    recordedPrimary: recorded?.primary ?? null,
    beforeInitialise: async (node) => {
      const decision = initialisationDecision(await knownCluster(config.home, repositories.repositories), {
        newCluster: options.newCluster,
      });
      switch (decision.phase) {
        case "initialise":
          return;
        case "refuse":
          throw new RelevoError(ErrorCode.PreconditionFailed, decision.message, {
            details: { node: node.name, remedy: "relevo restore --cluster" },
          });
        case "start-over": {
          const label = `${new Date().toISOString().replace(/[:.]/g, "-")}-${decision.known.systemIdentifier ?? "unknown"}`;
          // Every repository starts over: one left on the old generation would mix the two clusters' WAL and backups.
          for (const member of repositories.repositories) {
            const { generation, walSetAside } = await member.startNewGeneration(label);
            logger.warn(
              { generation, location: member.generationLocation, walSetAside, evidence: decision.known.evidence },
              "starting over: a new generation of the repository, the previous cluster's backups and WAL archive left unread",
            );
          }
          // Like a cluster rebuilt by restore --cluster, every node is new: the old cluster's fences, synchronous and
          // eligible sets, its primary's last LSN and a journaled operation (resumed on new nodes it would act on
          // nothing it knew) are dropped, and the node initialised now is recorded as the primary.
          await recordRebuiltCluster(redis.client, redis.keys, node.name);
          // The gaps recorded were the set-aside archive's: the new cluster's archive starts without any.
          await redis.client.del(redis.keys.archiveGaps);
          fenced.clear();
          startedOver = true;
          return;
        }
        default:
          throw new UnreachableCaseError(decision);
      }
    },
  };
  const outcomes = await bootstrapCluster(bootstrap, nodes);
  // A node bootstrap fenced now (it would have been a second primary) is recorded fenced, so the monitor rejoins it as a replica.
  for (const outcome of outcomes) {
    if (outcome.phase !== "fenced" || !recorded || startedOver || recorded.fenced.includes(outcome.node.name)) continue;
    // Only over the state read before bootstrap, and no operation begun since: another instance's change of primary is never undone.
    await store
      .update(null, (current) => ({ ...(current ?? recorded), fenced: withName((current ?? recorded).fenced, outcome.node.name) }), {
        epoch: recorded.epoch,
        unlessKey: redis.keys.operation.lock,
      })
      .catch((error: Error) =>
        logger.warn({ node: outcome.node.name, err: error.message }, "fence not recorded (the state changed meanwhile)"),
      );
  }
  const superuser = { user: ROLE_SUPERUSER, password: secrets.superuserPassword, database: "postgres", trustedCa };
  await recordClusterIdentity({ config, logger, secrets, trustedCa, superuser, repositories: repositories.repositories }, outcomes);
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
    if (event) await redis.events.emit(event);
  }
  return { store, bootstrap, outcomes, superuser };
}

/**
 * The primary's system identifier into the data home (see cluster-identity),
 * so that the home remembers its cluster if every node is lost, and into
 * the repository's descriptor, so that an open tells the home's repository
 * from another cluster's (see repository-descriptor). Best effort:
 * without a reachable primary it waits for the next start.
 */
async function recordClusterIdentity(
  options: Pick<StartContext, "config" | "logger"> & {
    readonly secrets: Secrets;
    readonly trustedCa: TrustAnchors;
    readonly superuser: Credentials;
    readonly repositories: readonly Repository[];
  },
  outcomes: readonly NodeBootstrapOutcome[],
): Promise<void> {
  const { config, logger, secrets, trustedCa, superuser, repositories } = options;
  try {
    const candidates = outcomes.filter((outcome) => outcome.phase !== "fenced").map((outcome) => outcome.node);
    const primary = await findWritablePrimary({ config, secrets, trustedCa }, candidates);
    if (!primary) return;
    const systemIdentifier = await withNodeClient(primary, superuser, config.nodeTimeoutMs, readSystemIdentifier);
    if (await recordIdentity(config.home, config.clusterName, systemIdentifier)) {
      logger.info({ systemIdentifier, node: primary.name }, "cluster's system identifier recorded in the data home");
    }
    // Then in each repository's descriptor (home first: a descriptor naming a cluster the home does not refuses the open).
    for (const repository of repositories) {
      const location = repository.location;
      const recorded = await repository.recordSystemIdentifier(systemIdentifier);
      if (recorded.phase === "write")
        logger.info(
          { systemIdentifier, generation: repository.generation, location },
          "cluster's system identifier recorded in repository.json",
        );
      if (recorded.phase === "conflict")
        logger.warn({ systemIdentifier, reason: recorded.reason, location }, "repository.json not given the cluster's system identifier");
    }
  } catch (error) {
    logger.warn({ err: (error as Error).message }, "the cluster's system identifier was not recorded in the data home or the repository");
  }
}

export interface Topology {
  /** The application database on whichever node is the primary. */
  readonly database: PrimaryDatabase;
  readonly collector: TopologyCollector;
}

/**
 * The topology collector, polled once before the service answers; on a new
 * primary the archiver and the application database follow it, and the
 * last minutes of events are consolidated again.
 */
export async function startTopology(
  options: StartContext & {
    readonly driver: NodeDriver;
    readonly secrets: Secrets;
    readonly trustedCa: TrustAnchors;
    readonly redis: RedisAndEvents;
    readonly nodes: readonly NodeRef[];
    readonly superuser: Credentials;
    readonly archiver: WalArchiver;
    /**
     * Each repository's WAL pusher: the received files it refuses, and
     * whether it reaches its repository (its reason while it has not for a
     * while), are named in the cluster's health.
     */
    readonly pushes: readonly { readonly pusher: Pick<WalPusher, "healthReasons">; readonly health: Pick<PushHealth, "healthReasons"> }[];
    /** The archive's gaps, named in the cluster's health until a full backup starts past them. */
    readonly archiveGaps: ArchiveGaps;
    /** Configured repositories not opened yet (their stores did not answer): each named in the cluster's health. */
    readonly pendingRepositories: () => readonly PendingRepository[];
    /** Does nothing until the consolidator runs. */
    readonly replayRecentEvents: (windowMs: number) => void;
  },
): Promise<Topology> {
  const { config, logger, cleanups, driver, secrets, trustedCa, redis, nodes, superuser, archiver, pushes, archiveGaps } = options;
  const { replayRecentEvents } = options;
  const database = new PrimaryDatabase(
    { user: ROLE_APP, password: secrets.appPassword, database: APP_DATABASE, trustedCa },
    config.nodeTimeoutMs,
    logger,
  );
  cleanups.push(() => database.close());
  const collector = new TopologyCollector({
    clusterName: config.clusterName,
    nodes,
    driver,
    credentials: superuser,
    redis: redis.client,
    keys: redis.keys,
    publisher: publisherOf(redis.pubSub),
    events: redis.events,
    logger,
    pollIntervalMs: config.topologyPollIntervalMs,
    nodeTimeoutMs: config.nodeTimeoutMs,
    lagAlertBytes: config.lagAlertBytes,
    serviceReasons: async () => [
      ...(archiver.refusal ? [archiver.refusal] : []),
      ...(archiver.spoolFullReason ? [archiver.spoolFullReason] : []),
      ...(await Promise.all(pushes.map(({ health }) => health.healthReasons()))).flat(),
      // A file the spool holds is refused alike by every repository's pusher: named once.
      ...new Set(pushes.flatMap(({ pusher }) => pusher.healthReasons)),
      ...(await archiveGaps.healthReasons()),
      ...options
        .pendingRepositories()
        .map(
          (pending) =>
            `${describeRepository(pending.settings)} is not opened (since ${pending.since}: ${pending.error}): ` +
            "the WAL and backups it lacks wait for it, the spool and the primary keep that WAL",
        ),
    ],
    onPrimary: async (primary) => {
      archiver.follow(primary);
      await database.follow(primary);
      if (primary) replayRecentEvents(RECONSOLIDATE_WINDOW_MS);
    },
  });
  collector.start();
  cleanups.push(() => collector.stop());
  await collector.pollNow();
  return { database, collector };
}
