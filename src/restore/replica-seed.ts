import type { TrustAnchors } from "../postgres/connection";
import { superuserCredentials, type NodeBootstrapOutcome } from "../cluster/bootstrap";
import { ROLE_REPLICATION } from "../postgres/managed-settings";
import type { RelevoConfig } from "../config/config";
import type { Logger } from "../log";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import type { Secrets } from "../secrets/secrets-store";
import { seedStandbyFromBackup } from "./restore";
import type { RepositorySet } from "../storage/repository-set";
import { repositoryHoldings } from "./choose-backup";
import { restoreOrder, unionHoldings } from "./repository-order";
import { fromEachRepository } from "./restore-from-repositories";
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
  deps: { driver: NodeDriver; repositories: RepositorySet; secrets: Secrets; trustedCa: TrustAnchors; logger: Logger },
): ((node: NodeRef, upstream: NodeRef, slot: string) => Promise<SeededFromRepository | null>) | undefined {
  if (config.replicaSeed !== "repository") return undefined;
  return async (node, upstream, slot) => {
    // The newest backup some repository holds complete; read from the first whose copy of it seeds (see restoreOrder).
    const holdings = await repositoryHoldings(deps.repositories);
    if (holdings.every((holding) => holding.error !== undefined)) throw holdings[0]!.error;
    const newest = unionHoldings(holdings)
      .manifests.filter((manifest) => manifest.status === "completed")
      .at(-1);
    const order = newest ? restoreOrder(holdings, newest.id, { kind: "latest" }).order : [];
    if (!newest || order.length === 0) {
      deps.logger.warn({ node: node.name }, "no completed backup to seed the replica from: seeding it from the primary");
      return null;
    }
    // Null when the backup is locked (a restore test, a CLI restore): seeded from the primary then (logged).
    const seeded = await fromEachRepository(
      deps,
      { backupId: newest.id, target: node.name, order },
      ({ repository, manifest, walSource }) =>
        seedStandbyFromBackup(
          {
            clusterName: config.clusterName,
            maxSlotWalKeepSize: config.maxSlotWalKeepSize,
            driver: deps.driver,
            repository,
            walSource,
            superuser: superuserCredentials(deps),
            logger: deps.logger,
          },
          {
            manifest,
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
        ),
    );
    return seeded.value;
  };
}

/** How an outcome reads in the CLI and in events. */
export function seededFrom(outcome: Extract<NodeBootstrapOutcome, { phase: "seeded" }>): string {
  return outcome.from === "repository"
    ? `seeded from the repository, streaming from ${outcome.upstream}`
    : `seeded from ${outcome.upstream}`;
}
