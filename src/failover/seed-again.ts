import { seedReplica } from "../cluster/bootstrap";
import { leaveSynchronousSet } from "../cluster/replicas";
import type { NodeRef } from "../nodes/node-driver";
import type { HeldFileLock } from "../storage/file-lock";
import { withNodeClient } from "../postgres/connection";
import { dropSlot, slotNameFor } from "../postgres/replication-config";
import { without, withName } from "./cluster-state";
import type { OperationContext } from "./operation-context";
import type { RunningOperation } from "./operation-journal";

/**
 * Destroys a member and seeds it again from scratch (pg_basebackup, or the
 * repository with RELEVO_REPLICA_SEED=repository) as a replica of
 * `primary` over a new slot: a reseed's work, and a rejoin's when pg_rewind
 * failed.
 *
 * Before the destroy the node is recorded in the cluster state's
 * `reseeding`, and it leaves that list only once seeded: a seed that fails
 * past the destroy (the primary's connection, pg_basebackup, the start)
 * leaves the node absent but recorded, and the failover monitor, in
 * whichever instance leads, seeds it again after its hold-off (see
 * lostSlotRepairs) until one attempt succeeds. The caller's journal is
 * closed on failure as usual: an operation kept in it would keep a failover
 * from running.
 *
 * First of all the node leaves the synchronous and eligible sets (and the
 * primary's synchronous_standby_names): commits must not wait through a
 * full copy for a node being destroyed, nor may it be promoted. Done here,
 * not left to callers, so that every route to a destroy (a reseed, a
 * manual rejoin of a replica still in the set) leaves the set first; a
 * caller that did it already costs one idempotent write.
 *
 * Once seeded the node holds only the primary's data: it is no longer
 * fenced either (a fenced old primary whose rejoin left it destroyed is
 * seeded again by the monitor's reseed, which has nothing else to unfence it).
 */
export async function destroyAndSeed(
  context: OperationContext,
  operation: RunningOperation,
  node: NodeRef,
  primary: NodeRef,
  options: { readonly claimed?: HeldFileLock } = {},
): Promise<void> {
  const { deps } = context;
  operation.assertHeld();
  await leaveSynchronousSet(context, operation, node.name, { unfence: false });
  await deps.store.update(operation.guard, (state) => ({ ...state!, reseeding: withName(state!.reseeding ?? [], node.name) }));
  await context.stopQuietly(node);
  await deps.driver.destroy(node);
  // The old slot reserves nothing the new copy needs (a lost one reserves nothing at all): made again, reserving WAL from now, by the seed.
  await withNodeClient(primary, deps.superuser, deps.config.nodeTimeoutMs, (client) => dropSlot(client, slotNameFor(node)));
  operation.assertHeld();
  await seedReplica(deps.bootstrap, node, primary, { claimed: options.claimed }).catch(async (error: unknown) => {
    // A seed that failed once it made the new slot leaves a slot nothing consumes, holding WAL until the next try.
    await withNodeClient(primary, deps.superuser, deps.config.nodeTimeoutMs, (client) => dropSlot(client, slotNameFor(node))).catch(
      () => undefined,
    );
    throw error;
  });
  await deps.store.update(operation.guard, (state) => ({
    ...state!,
    reseeding: without(state!.reseeding ?? [], node.name),
    fenced: without(state!.fenced, node.name),
  }));
}
