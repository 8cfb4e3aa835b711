import type { TrustAnchors } from "../postgres/connection";
import { superuserCredentials, type NodeBootstrapOutcome } from "../cluster/bootstrap";
import { ROLE_REPLICATION } from "../postgres/managed-settings";
import type { RelevoConfig } from "../config/config";
import type { Logger } from "../log";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import type { Secrets } from "../secrets/secrets-store";
import { seedStandbyFromBackup } from "./restore";
import type { Repository } from "../storage/repository";
import type { SeededFromRepository } from "../cluster/bootstrap";

/**
 * With RELEVO_REPLICA_SEED=repository, what bootstrap seeds new replicas
 * with: the newest completed backup and the archive, instead of a
 * pg_basebackup that reads the whole primary. Undefined (pg_basebackup) with
 * the default; the seeder returns null (pg_basebackup) when no backup exists
 * yet or the newest is locked by a restore or verification, else the WAL
 * feeder its caller closes once the replica streams.
 */
export function repositorySeeder(
  config: Pick<RelevoConfig, "replicaSeed" | "clusterName" | "maxSlotWalKeepSize" | "backupParallelism">,
  deps: { driver: NodeDriver; repository: Repository; secrets: Secrets; trustedCa: TrustAnchors; logger: Logger },
): ((node: NodeRef, upstream: NodeRef, slot: string) => Promise<SeededFromRepository | null>) | undefined {
  if (config.replicaSeed !== "repository") return undefined;
  return async (node, upstream, slot) => {
    const completed = (await deps.repository.listManifests()).filter((manifest) => manifest.status === "completed");
    const newest = completed[completed.length - 1];
    if (!newest) {
      deps.logger.warn({ node: node.name }, "no completed backup to seed the replica from: seeding it from the primary");
      return null;
    }
    // Null when the backup is locked (a restore test, a CLI restore): seeded from the primary then (logged).
    return seedStandbyFromBackup(
      {
        clusterName: config.clusterName,
        maxSlotWalKeepSize: config.maxSlotWalKeepSize,
        driver: deps.driver,
        repository: deps.repository,
        superuser: superuserCredentials(deps),
        logger: deps.logger,
      },
      {
        manifest: newest,
        node,
        upstream,
        slot,
        replication: {
          user: ROLE_REPLICATION,
          password: deps.secrets.replicationPassword,
          database: "replication",
          trustedCa: deps.trustedCa,
        },
        parallelism: config.backupParallelism,
      },
    );
  };
}

/** How an outcome reads in the CLI and in events. */
export function seededFrom(outcome: Extract<NodeBootstrapOutcome, { phase: "seeded" }>): string {
  return outcome.from === "repository"
    ? `seeded from the repository, streaming from ${outcome.upstream}`
    : `seeded from ${outcome.upstream}`;
}
