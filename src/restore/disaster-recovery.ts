import { bootstrapCluster, superuserCredentials, type NodeBootstrapOutcome } from "../cluster/bootstrap";
import { loadMembers } from "../cluster/membership";
import { recordIdentity } from "../cluster/cluster-identity";
import { withNodeClient, type TrustAnchors } from "../postgres/connection";
import { readSystemIdentifier } from "../postgres/control-data";
import type { RelevoConfig } from "../config/config";
import { ErrorCode, RelevoError, UnreachableCaseError } from "../errors";
import type { Logger } from "../log";
import type { NodeDriver, NodeProcessState, NodeRef } from "../nodes/node-driver";
import type { Secrets } from "../secrets/secrets-store";
import { chooseBackupAcross } from "./choose-backup";
import { walSummarizerFor } from "../wal/wal-summary";
import type { BackupManifest } from "../backup/manifest";
import type { RecoveryTarget } from "./recovery-target";
import type { RepositorySet } from "../storage/repository-set";
import { repositorySeeder } from "./replica-seed";
import { restoreFromRepositories } from "./restore-from-repositories";
import { ensureArchiveSlot } from "../wal/wal-archiver";
import { probePort, type PortProbe } from "../postgres/port-probe";

export interface ClusterRecoveryDeps {
  readonly config: RelevoConfig;
  readonly driver: NodeDriver;
  /** Every configured repository: the primary is restored from the first whose copy restores (see restoreFromRepositories). */
  readonly repositories: RepositorySet;
  readonly secrets: Secrets;
  /** The CA's certificate (PEM) the nodes' certificates are checked against. */
  readonly trustedCa: TrustAnchors;
  readonly logger: Logger;
  /**
   * Makes the recorded cluster state (Redis) agree with the rebuilt cluster
   * (see recordRebuiltCluster): called once the primary is restored, before
   * the replicas are seeded, so that relevo up never acts on the lost
   * cluster's state (a fence of the node now the primary, a journaled
   * operation) even when seeding fails.
   */
  readonly recordRebuilt: (primary: NodeRef) => Promise<void>;
}

export interface ClusterRecovery {
  readonly manifest: BackupManifest;
  readonly outcomes: readonly NodeBootstrapOutcome[];
  /** Lost nodes whose storage held what Relevo did not make (see nodeLoss): where those remains are kept. */
  readonly setAside: readonly SetAsideRemains[];
}

export interface SetAsideRemains {
  readonly node: string;
  readonly keptIn: string;
  /** What made them worth keeping ("its data directory held files but no PG_VERSION"). */
  readonly why: string;
}

/**
 * Disaster recovery, when every node is lost: the first member is restored
 * from the repository (a backup plus the archive up to the target; by default
 * all of it, including the segment the archiver was still receiving) and
 * promoted on a new timeline; it is then stopped and started again the way
 * `relevo up` starts a node (Relevo's own settings, no recovery settings),
 * and the other members are seeded from it as new replicas. Relevo manages
 * the result as before. Refused while any node still has data: that is not a
 * disaster, and nothing is overwritten. A node whose data directory is gone
 * or empty is lost; what is left of it is removed when it is only Relevo's
 * own (the local driver's folder and server log, a container, an emptied
 * volume), and set aside otherwise (see nodeLoss, NodeDriver.setAside): a
 * data directory holding files but no PG_VERSION, or anything else in the
 * node's storage, is never deleted.
 */
export async function recoverCluster(
  deps: ClusterRecoveryDeps,
  options: { backupId?: string; recoveryTarget: RecoveryTarget },
): Promise<ClusterRecovery> {
  const { config, driver, repositories, logger } = deps;
  const nodes = await loadMembers(config);
  const surviving: string[] = [];
  const undecided: string[] = [];
  const remains: NodeRef[] = [];
  const damaged: { readonly node: NodeRef; readonly why: string }[] = [];
  for (const node of nodes) {
    const loss = nodeLoss(await lossFacts(driver, node, config.nodeTimeoutMs));
    if (loss.phase === "survives") surviving.push(`${node.name} (${driver.dataDirectory(node)}: ${loss.why})`);
    else if (loss.phase === "undecided") undecided.push(`${node.name} (port ${node.port} on ${node.host}: ${loss.why})`);
    else if (loss.phase === "lost-with-remains") remains.push(node);
    else if (loss.phase === "damaged") damaged.push({ node, why: loss.why });
  }
  if (surviving.length > 0 || undecided.length > 0) {
    const reasons = [
      ...(surviving.length > 0
        ? [`${surviving.join(", ")} still exist: start them with relevo up, or stop them, or move them away first`]
        : []),
      // A server of the node may still run there, its files gone from under it; and no node is rebuilt on a port another program holds.
      ...(undecided.length > 0
        ? [
            `${undecided.join(", ")} cannot be told lost: stop what answers there, or make the address reachable from this host, ` +
              `and run the command again`,
          ]
        : []),
    ];
    throw new RelevoError(
      ErrorCode.PreconditionFailed,
      `relevo restore --cluster rebuilds a cluster whose every node is lost, and ${reasons.join("; ")} (nothing was touched)`,
      { details: { surviving, undecided } },
    );
  }
  const chosen = await chooseBackupAcross(
    repositories,
    walSummarizerFor(repositories.first.repository, config, logger),
    options.backupId,
    options.recoveryTarget,
  );
  // Remains that are not only Relevo's may still be recovered by hand: never deleted, set aside first (the driver
  // refuses, touching nothing, when it cannot), before anything else is removed.
  const setAside: SetAsideRemains[] = [];
  const suffix = `lost-${compactUtc(new Date())}`;
  for (const { node, why } of damaged) {
    const keptIn = await driver.setAside(node, suffix);
    logger.warn({ node: node.name, keptIn, why }, "a lost node's remains are not only Relevo's: kept aside, not deleted");
    setAside.push({ node: node.name, keptIn, why });
  }
  // What is left of a lost node that is only Relevo's (its folder and server
  // log, its container, an emptied volume) goes: the node is made again from
  // the repository.
  for (const node of remains) {
    logger.warn(
      { node: node.name, dataDirectory: driver.dataDirectory(node) },
      "removing what is left of a lost node before rebuilding it",
    );
    await driver.destroy(node);
  }
  const primary = nodes[0]!;
  const superuser = superuserCredentials(deps);
  logger.info(
    { backup: chosen.manifest.id, node: primary.name, target: options.recoveryTarget },
    "restoring the primary from the repository",
  );
  const { manifest } = await restoreFromRepositories(
    { clusterName: config.clusterName, maxSlotWalKeepSize: config.maxSlotWalKeepSize, driver, repositories, superuser, logger },
    {
      backupId: chosen.manifest.id,
      plan: chosen.plan,
      target: primary,
      members: nodes,
      recoveryTarget: options.recoveryTarget,
      parallelism: config.backupParallelism,
      startTimeoutMs: config.startTimeoutMs,
      // A lost node's adopted container (docker compose's) outlives destroy() with its volume emptied: rebuilt in it.
      acceptEmptyStorage: true,
    },
  );
  try {
    // The archiver's slot, now: it keeps the new timeline's WAL (and the
    // segment of the switch) until the archiver, started by relevo up,
    // resumes from the last archived segment and follows the switch.
    await ensureArchiveSlot(primary, superuser, config.nodeTimeoutMs);
    await deps.recordRebuilt(primary);
    // The restore keeps the cluster's system identifier: the data home records it (again) as its cluster's.
    await recordIdentity(
      config.home,
      config.clusterName,
      await withNodeClient(primary, superuser, config.nodeTimeoutMs, readSystemIdentifier),
    );
    // Promoted; from now on a normal primary (the start rewrites Relevo's settings without the recovery ones).
    await driver.stop(primary, { mode: "fast", timeoutMs: config.startTimeoutMs });
    const outcomes = await bootstrapCluster(
      {
        config,
        driver,
        secrets: deps.secrets,
        trustedCa: deps.trustedCa,
        logger,
        seedFromRepository: repositorySeeder(config, {
          driver,
          repositories,
          secrets: deps.secrets,
          trustedCa: deps.trustedCa,
          logger,
        }),
      },
      nodes,
    );
    return { manifest, outcomes, setAside };
  } catch (error) {
    // A state not recorded says what to do itself: "run relevo up" would act on the lost cluster's record.
    if (error instanceof RelevoError && error.details.stateRecorded === false) throw error;
    throw new RelevoError(
      ErrorCode.CommandFailed,
      `the primary ${primary.name} was restored from backup ${manifest.id}, but bringing up the cluster failed: ${(error as Error).message}; ` +
        `fix the cause and run relevo up (it seeds missing replicas)`,
      { cause: error },
    );
  }
}

/** What disaster recovery reads of a node to judge it lost (see nodeLoss). */
export interface NodeLossFacts {
  readonly phase: NodeProcessState["phase"];
  readonly hasVersion: boolean;
  /** Entries in its data directory (0 when the directory is missing). */
  readonly dataEntries: number;
  /** What its storage holds beside the data directory that the driver did not put there (NodeDriver.foreignRemains). */
  readonly foreignRemains: readonly string[];
  /**
   * What answers on the node's address (a server whose pid file or whole folder is gone, or not the driver's to
   * see); asked only of a node that holds no cluster and whose server the driver does not see.
   */
  readonly port: PortProbe;
}

async function lossFacts(driver: NodeDriver, node: NodeRef, timeoutMs: number): Promise<NodeLossFacts> {
  const state = await driver.state(node);
  const stored = state.phase !== "absent";
  const hasVersion = stored && (await driver.readFile(node, "PG_VERSION")) !== null;
  const lookCloser = (state.phase === "stopped" || state.phase === "absent") && !hasVersion;
  return {
    phase: state.phase,
    hasVersion,
    dataEntries: lookCloser && stored ? (await driver.listFiles(node, ".")).length : 0,
    foreignRemains: lookCloser && stored ? await driver.foreignRemains(node) : [],
    port: lookCloser ? await probePort(node.host, node.port, { timeoutMs }) : { answer: "nothing" },
  };
}

export type NodeLoss =
  /** No storage at all. */
  | { readonly phase: "lost" }
  /** Storage left that is only Relevo's (a folder and server log, a container, a volume) with the data directory missing or empty: removed. */
  | { readonly phase: "lost-with-remains" }
  /**
   * Remains that are not only Relevo's: a data directory holding files but no PG_VERSION (not a cluster, yet perhaps
   * recoverable by hand), or anything else in the node's storage; set aside, never deleted.
   */
  | { readonly phase: "damaged"; readonly why: string }
  | { readonly phase: "survives"; readonly why: string }
  /**
   * Its port answers, but not as PostgreSQL, or cannot be asked: neither lost (a server of the node may run there,
   * its files gone from under it) nor surviving. Refused, naming why, and nothing is touched: the operator decides.
   */
  | { readonly phase: "undecided"; readonly why: string };

/**
 * Whether a node is lost, for disaster recovery: a node without storage, or
 * whose data directory is missing or empty, and no server runs on it. Its
 * remains are removed only when they are Relevo's own; a data directory that
 * holds files but no PG_VERSION (what relevo up refuses as
 * DATA_DIR_NOT_OURS), or storage holding anything the driver did not put
 * there (an operator's `data.broken` beside an emptied data directory), is
 * set aside, never deleted. A server running, by the driver's word or
 * answering as PostgreSQL on the node's port, or a PG_VERSION: the node
 * survives, and nothing is overwritten. A port that answers otherwise, or
 * cannot be asked, leaves the node undecided: never taken for lost without
 * saying why. Pure.
 */
export function nodeLoss(facts: NodeLossFacts): NodeLoss {
  if (facts.phase === "running" || facts.phase === "paused") return { phase: "survives", why: `its server is ${facts.phase}` };
  if (facts.hasVersion) return { phase: "survives", why: "it holds a PostgreSQL cluster" };
  switch (facts.port.answer) {
    case "postgres":
      return { phase: "survives", why: "a PostgreSQL server answers on its port" };
    case "other":
      return { phase: "undecided", why: `something answers on its port, but not as PostgreSQL: ${facts.port.detail}` };
    case "unknown":
      return { phase: "undecided", why: `whether a server answers on its port cannot be told: ${facts.port.detail}` };
    case "nothing":
      break;
    default:
      throw new UnreachableCaseError(facts.port);
  }
  if (facts.phase === "absent") return { phase: "lost" };
  if (facts.dataEntries > 0) return { phase: "damaged", why: "its data directory held files but no PG_VERSION" };
  if (facts.foreignRemains.length > 0)
    return { phase: "damaged", why: `its storage held what Relevo did not put there (${facts.foreignRemains.join(", ")})` };
  return { phase: "lost-with-remains" };
}

/** 2026-12-06T16:00:41.123Z as 20261206T160041Z: a file name's time. */
function compactUtc(date: Date): string {
  return date
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d+Z$/, "Z");
}
