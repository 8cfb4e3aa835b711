import { leaveSynchronousSet } from "../cluster/replicas";
import { ErrorCode, RelevoError } from "../errors";
import { type StateGuard } from "./cluster-state";
import { newEntry, type OperationContext } from "./operation-context";
import type { RunningOperation } from "./operation-journal";
import { rejoinFailed } from "./rejoin";
import { destroyAndSeed } from "./seed-again";
import { claimNodeTarget } from "../restore/target-claim";
import type { HeldFileLock } from "../storage/file-lock";

export interface ReseedRequest {
  /** Why the replica cannot go on as it is (its slot lost): the journal's reason and the events'. */
  readonly reason: string;
  /** The monitor's lease: refused if it is no longer held. */
  readonly lease?: StateGuard | null;
}

/**
 * Seeds a running replica again from scratch (pg_basebackup, or the
 * repository with RELEVO_REPLICA_SEED=repository) when it can never stream
 * again as it is: its slot on the primary was invalidated and the WAL it
 * needs is gone (see lost-slot-rules.ts). A journaled operation like a
 * rejoin: one at a time, never while a failover or switchover holds the
 * lock, resumed by another instance from its journal.
 */
export async function reseed(context: OperationContext, name: string, request: ReseedRequest): Promise<void> {
  await context.refuseWhileBusy();
  const node = context.node(name);
  const state = await context.state();
  if (state.primary === node.name)
    throw new RelevoError(ErrorCode.PreconditionFailed, `${node.name} is the primary; only a replica is seeded again`);
  const operation = await context.deps.journal.begin(
    newEntry({ kind: "reseed", trigger: "automatic", from: node.name, to: state.primary, reason: request.reason }),
    request.lease ?? null,
  );
  await context.tracked(operation, () => runReseed(context, operation));
}

/**
 * Runs (or resumes) a reseed from its journal. Every step is idempotent: the
 * node leaves the synchronous set first (commits must not wait for a node
 * about to be destroyed, nor count it as eligible), then its data and its
 * lost slot go, and it is seeded again over a new slot. A run cut short
 * anywhere is run again from the start: the node's data is a replica's,
 * which the seed replaces whole.
 *
 * Before the node is destroyed it is recorded in the cluster state's
 * `reseeding` (see destroyAndSeed): a reseed that fails past the destroy
 * closes its journal like any failed rejoin, and the monitor seeds the node
 * again after its hold-off, never leaving a member absent.
 */
export async function runReseed(context: OperationContext, operation: RunningOperation): Promise<void> {
  const { deps } = context;
  const name = operation.entry.from;
  const started = Date.now();
  let claimed: HeldFileLock | null = null;
  try {
    const node = context.node(name);
    // The name claimed before anything is touched, until the node is made again (see seedReplica).
    claimed = await claimNodeTarget(deps.driver, node, { purpose: `reseed ${node.name}` });
    const primary = await leaveSynchronousSet(context, operation, node.name, { unfence: false });
    if (primary.name === node.name) throw new RelevoError(ErrorCode.PreconditionFailed, `${node.name} is the primary now: not reseeded`);
    await operation.record({ stage: "reseeding" });
    operation.assertHeld();
    await destroyAndSeed(context, operation, node, primary, { claimed });
    await operation.finish();
    await deps.events.emit({
      kind: "node:rejoined",
      severity: "info",
      node: node.name,
      message: `${node.name} seeded again as a replica of ${primary.name} (${operation.entry.reason})`,
      data: { method: "reseed", upstream: primary.name, durationMs: Date.now() - started },
    });
    await deps.refreshTopology().catch(() => undefined);
  } catch (error) {
    return rejoinFailed(context, operation, error, `${name} was not seeded again`);
  } finally {
    await claimed?.release();
  }
}
