import { bootstrapCluster, superuserCredentials, type NodeBootstrapOutcome } from "../cluster/bootstrap";
import { loadMembers } from "../cluster/membership";
import type { RelevoConfig } from "../config/config";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import type { NodeDriver } from "../nodes/node-driver";
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
 * disaster, and nothing is overwritten.
 */
export async function recoverCluster(
  deps: ClusterRecoveryDeps,
  options: { backupId?: string; recoveryTarget: RecoveryTarget },
): Promise<ClusterRecovery> {
  const { config, driver, repository, logger } = deps;
  const nodes = await loadMembers(config);
  const surviving: string[] = [];
  for (const node of nodes)
    if ((await driver.state(node)).phase !== "absent") surviving.push(`${node.name} (${driver.dataDirectory(node)})`);
  if (surviving.length > 0) {
    throw new RelevoError(
      ErrorCode.PreconditionFailed,
      `relevo restore --cluster rebuilds a cluster whose every node is lost, and ${surviving.join(", ")} still exist: ` +
        `start them with relevo up, or move them away first`,
    );
  }
  const manifest = await chooseBackupIn(repository, walSummarizerFor(repository, config, logger), options.backupId, options.recoveryTarget);
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
    },
  );
  try {
    // The archiver's slot, now: it keeps the new timeline's WAL (and the
    // segment of the switch) until the archiver, started by relevo up,
    // resumes from the last archived segment and follows the switch.
    await ensureArchiveSlot(primary, superuser, config.nodeTimeoutMs);
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
    throw new RelevoError(
      ErrorCode.CommandFailed,
      `the primary ${primary.name} was restored from backup ${manifest.id}, but bringing up the cluster failed: ${(error as Error).message}; ` +
        `fix the cause and run relevo up (it seeds missing replicas)`,
      { cause: error },
    );
  }
}
