import { bootstrapCluster, superuserCredentials, type NodeBootstrapOutcome } from "../cluster/bootstrap";
import { loadMembers } from "../cluster/membership";
import { recordIdentity } from "../cluster/cluster-identity";
import { withNodeClient } from "../postgres/connection";
import { readSystemIdentifier } from "../postgres/control-data";
import type { RelevoConfig } from "../config/config";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import type { NodeDriver, NodeProcessState, NodeRef } from "../nodes/node-driver";
import type { Secrets } from "../secrets/secrets-store";
import { chooseBackupIn } from "./choose-backup";
import { walSummarizerFor } from "../wal/wal-summary";
import type { BackupManifest } from "../backup/manifest";
import type { RecoveryTarget } from "./recovery-target";
import type { Repository } from "../storage/repository";
import { repositorySeeder } from "./replica-seed";
import { restoreBackup } from "./restore";
import { ensureArchiveSlot } from "../wal/wal-archiver";

export interface ClusterRecoveryDeps {
  readonly config: RelevoConfig;
  readonly driver: NodeDriver;
  readonly repository: Repository;
  readonly secrets: Secrets;
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
 * or holds no cluster (no PG_VERSION) is lost, whatever is left around it.
 */
export async function recoverCluster(
  deps: ClusterRecoveryDeps,
  options: { backupId?: string; recoveryTarget: RecoveryTarget },
): Promise<ClusterRecovery> {
  const { config, driver, repository, logger } = deps;
  const nodes = await loadMembers(config);
  const surviving: string[] = [];
  const remains: NodeRef[] = [];
  for (const node of nodes) {
    const state = await driver.state(node);
    const hasVersion = state.phase === "absent" ? false : (await driver.readFile(node, "PG_VERSION")) !== null;
    const loss = nodeLoss({ phase: state.phase, hasVersion });
    if (loss === "survives") surviving.push(`${node.name} (${driver.dataDirectory(node)})`);
    else if (loss === "lost-with-remains") remains.push(node);
  }
  if (surviving.length > 0) {
    throw new RelevoError(
      ErrorCode.PreconditionFailed,
      `relevo restore --cluster rebuilds a cluster whose every node is lost, and ${surviving.join(", ")} still exist: ` +
        `start them with relevo up, or move them away first`,
    );
  }
  const manifest = await chooseBackupIn(repository, walSummarizerFor(repository, config, logger), options.backupId, options.recoveryTarget);
  // What is left of a lost node (its folder and server log, its container,
  // an emptied volume) goes: the node is made again from the repository.
  for (const node of remains) {
    logger.warn(
      { node: node.name, dataDirectory: driver.dataDirectory(node) },
      "removing what is left of a lost node before rebuilding it",
    );
    await driver.destroy(node);
  }
  const primary = nodes[0]!;
  const superuser = superuserCredentials(deps.secrets);
  logger.info({ backup: manifest.id, node: primary.name, target: options.recoveryTarget }, "restoring the primary from the repository");
  await restoreBackup(
    { clusterName: config.clusterName, maxSlotWalKeepSize: config.maxSlotWalKeepSize, driver, repository, superuser, logger },
    {
      manifest,
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
        logger,
        seedFromRepository: repositorySeeder(config, { driver, repository, secrets: deps.secrets, logger }),
      },
      nodes,
    );
    return { manifest, outcomes };
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

/**
 * Whether a node is lost, for disaster recovery: a node without storage, or
 * whose data directory is missing or holds no PG_VERSION (no PostgreSQL
 * cluster: the disk that held it is gone) and no server runs. Anything else
 * survives and is never overwritten. Pure.
 */
export function nodeLoss(facts: { phase: NodeProcessState["phase"]; hasVersion: boolean }): "lost" | "lost-with-remains" | "survives" {
  if (facts.phase === "absent") return "lost";
  if (facts.phase === "stopped" && !facts.hasVersion) return "lost-with-remains";
  return "survives";
}
