import { ErrorCode, RelevoError } from "../errors";
import type { NodeRef } from "../nodes/node-driver";
import { withNodeClient } from "../postgres/connection";
import { dropSlot, setSynchronousStandbys, slotNameFor } from "../postgres/replication-config";
import { isPortFree } from "../util/ports";
import { sleep } from "../util/sleep";
import { without } from "../failover/cluster-state";
import { newEntry, type OperationContext } from "../failover/operation-context";
import type { RunningOperation } from "../failover/operation-journal";
import { seedReplica } from "./bootstrap";
import { withClaimedTarget } from "../restore/target-claim";
import type { HeldFileLock } from "../storage/file-lock";
import { LOCK_REFRESH_MS, REMOTE_HOLDER_SILENT_INTERVALS } from "../storage/lock-decision";

/**
 * Adding and removing replicas. Each is a journaled operation like a
 * failover (one at a time across instances, resumable by another), since
 * both change what the primary waits for and which slots it keeps.
 */

/** Seeds a new replica of the primary (pg_basebackup, or the repository with RELEVO_REPLICA_SEED=repository) and makes it a member. */
export async function addReplica(context: OperationContext, name: string): Promise<NodeRef> {
  const { deps } = context;
  await context.refuseWhileBusy();
  const state = await context.state();
  const primary = context.node(state.primary);
  let port = deps.membership.nextPort();
  while (!(await isPortFree(primary.host, port))) port += 1;
  const planned = deps.membership.plan(name, port); // checks the name
  await assertNothingThere(context, planned);
  const operation = await deps.journal.begin(
    newEntry({
      kind: "add-replica",
      trigger: "manual",
      from: name,
      to: primary.name,
      reason: "replica added by an operator",
      facts: { port },
    }),
  );
  return context.tracked(operation, () => runAddReplica(context, operation, { claimWaitMs: 0 }));
}

/**
 * How long a resumed addition waits for the claim on its node's name: its
 * dead runner's claim, on another host, is only known dead once its file has
 * stayed untouched for REMOTE_HOLDER_SILENT_INTERVALS refreshes.
 */
const RESUMED_CLAIM_WAIT_MS = (REMOTE_HOLDER_SILENT_INTERVALS + 1) * LOCK_REFRESH_MS;

/**
 * A new replica's storage must not exist yet: what is there under a name
 * that is no member's is someone's (a restored copy made with that name or
 * in that directory, a stranger's data), and the seed would destroy it. Only
 * a resumed addition that had begun its seed clears what its own dead run
 * left (runAddReplica).
 */
async function assertNothingThere(context: OperationContext, node: NodeRef): Promise<void> {
  const { driver } = context.deps;
  const state = await driver.state(node);
  if (state.phase === "absent") return;
  throw new RelevoError(
    ErrorCode.TargetNotEmpty,
    `${node.name} is not a member, but a node of that name already exists here (${state.phase}, data in ${driver.dataDirectory(node)}), ` +
      `e.g. a restored copy: nothing was touched; stop and remove it, or choose another name`,
    { details: { node: node.name } },
  );
}

/**
 * Runs (or resumes) the addition of a replica from its journal. The node's
 * name is claimed (claimNodeTarget) from the check that nothing is there
 * until the node is a member, as a restore claims its copy's: a restoreBackup
 * of that name at once is refused, or refuses this, and neither destroys the
 * other's data.
 */
export async function runAddReplica(
  context: OperationContext,
  operation: RunningOperation,
  options: { claimWaitMs?: number } = {},
): Promise<NodeRef> {
  const { deps } = context;
  const entry = operation.entry;
  const primary = context.node((await context.state()).primary);
  const node: NodeRef = { name: entry.from, host: primary.host, port: Number(entry.facts.port) };
  operation.assertHeld();
  const claim = { purpose: `add replica ${node.name}`, waitMs: options.claimWaitMs ?? RESUMED_CLAIM_WAIT_MS };
  return withClaimedTarget(deps.driver, node, claim, (claimed) => addClaimedReplica(context, operation, { node, primary, claimed }));
}

async function addClaimedReplica(
  context: OperationContext,
  operation: RunningOperation,
  { node, primary, claimed }: { node: NodeRef; primary: NodeRef; claimed: HeldFileLock },
): Promise<NodeRef> {
  const { deps } = context;
  const entry = operation.entry;
  if (!deps.membership.find(node.name)) {
    // A seed cut short by a dead instance left half a node: start again from
    // nothing. Only then: before this operation began seeding, whatever is
    // there came since the check (a restored copy under that name) and is
    // someone else's.
    if (entry.facts.seeding === "begun") await deps.driver.destroy(node);
    else await assertNothingThere(context, node);
  }
  if (entry.facts.seeding !== "begun") await operation.record({ facts: { seeding: "begun" } });
  const outcome = await seedReplica(deps.bootstrap, node, primary, { claimed });
  await deps.membership.add(node);
  await operation.finish();
  await deps.events.emit({
    kind: "node:created",
    severity: "info",
    node: node.name,
    message: `${node.name} added as a replica of ${primary.name} (seeded from ${outcome.phase === "seeded" ? outcome.from : "primary"}), port ${node.port}`,
    data: { role: "replica", upstream: primary.name },
  });
  await deps.refreshTopology().catch(() => undefined);
  return node;
}

/**
 * A replica about to go (removed, or seeded again) stops counting first —
 * out of the eligible replicas and the synchronous set in the recorded
 * state — then the primary's commits stop waiting for it; so no commit is
 * ever acknowledged without it while it still counts as eligible, and none
 * waits for it while it is gone. Returns the primary. Idempotent.
 */
export async function leaveSynchronousSet(
  context: OperationContext,
  operation: RunningOperation,
  name: string,
  options: { unfence: boolean },
): Promise<NodeRef> {
  const { deps } = context;
  const state = await deps.store.update(operation.guard, (current) => {
    const base = current!;
    const joining = { ...base.joining };
    delete joining[name];
    return {
      ...base,
      eligible: without(base.eligible, name),
      syncSet: without(base.syncSet, name),
      fenced: options.unfence ? without(base.fenced, name) : base.fenced,
      // A replica removed (unfence: it leaves the cluster) is not seeded again by the monitor either.
      reseeding: options.unfence ? without(base.reseeding ?? [], name) : base.reseeding,
      joining,
    };
  });
  const primary = context.node(state.primary);
  await withNodeClient(primary, deps.superuser, deps.config.nodeTimeoutMs, (client) =>
    setSynchronousStandbys(client, deps.config.synchronous ? state.syncSet : []),
  );
  return primary;
}

/** Stops a replica, removes its data and its slot on the primary, and forgets it. */
export async function removeReplica(context: OperationContext, name: string): Promise<void> {
  await context.refuseWhileBusy();
  const node = context.node(name);
  const state = await context.state();
  if (state.primary === node.name)
    throw new RelevoError(ErrorCode.PreconditionFailed, `${node.name} is the primary; switch over to another node before removing it`);
  const operation = await context.deps.journal.begin(
    newEntry({ kind: "remove-replica", trigger: "manual", from: name, to: state.primary, reason: "replica removed by an operator" }),
  );
  await context.tracked(operation, () => runRemoveReplica(context, operation));
}

/** Runs (or resumes) the removal of a replica from its journal. */
export async function runRemoveReplica(context: OperationContext, operation: RunningOperation): Promise<void> {
  const { deps } = context;
  const node = deps.membership.find(operation.entry.from);
  // Resumed after the member was already forgotten: it is done.
  if (!node) return;
  const primary = await leaveSynchronousSet(context, operation, node.name, { unfence: true });
  operation.assertHeld();
  await context.stopQuietly(node);
  await deps.driver.destroy(node);
  let slotDropped = false;
  for (let attempt = 0; attempt < 50 && !slotDropped; attempt += 1) {
    slotDropped = await withNodeClient(primary, deps.superuser, deps.config.nodeTimeoutMs, async (client) => {
      await dropSlot(client, slotNameFor(node));
      return (await client.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", [slotNameFor(node)])).rowCount === 0;
    });
    if (!slotDropped) await sleep(100); // its WAL sender is still exiting
  }
  await deps.membership.remove(node.name);
  await operation.finish();
  await deps.events.emit({
    kind: "node:removed",
    severity: "warning",
    node: node.name,
    message: `${node.name} removed from the cluster${slotDropped ? "" : " (its slot is still active on the primary)"}`,
    data: { slotDropped },
  });
  await deps.refreshTopology().catch(() => undefined);
}
