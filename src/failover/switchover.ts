import { ErrorCode, RelevoError } from "../errors";
import type { FailoverRecord } from "../events/event-map";
import type { NodeRef } from "../nodes/node-driver";
import { withNodeClient } from "../postgres/connection";
import { latestCheckpointLocation, readControlData } from "../postgres/control-data";
import { ensureReservedSlot, setSynchronousStandbys, slotNameFor } from "../postgres/replication-config";
import { lsnToNumber } from "../postgres/lsn";
import { sleep } from "../util/sleep";
import { StaleWriterError, type StateGuard } from "./cluster-state";
import { lostBytesAtPromotion } from "./candidate";
import { refuseUnsafePromotion } from "./failover";
import { fenceNode } from "./fencing";
import { newEntry, recordOf, type OperationContext } from "./operation-context";
import type { RunningOperation } from "./operation-journal";
import { lastSeenPrimaryLsn } from "./primary-lsn";
import { followNewPrimary, promote, recordAsPrimary } from "./promotion";
import { followTargetBeforePromotion, oldPrimaryFollowing, restoreAsPrimary } from "./switchover-follow";
import { switchoverFenceReason, switchoverRefusal } from "./switchover-rules";
import { failoverTakesOver, missesEveryCheck, newPrimaryLost } from "./takeover";
import { monotonicNowMs } from "../util/monotonic-clock";

export interface SwitchoverRequest {
  readonly to: string;
  /** A failback is a switchover back to the preferred primary. */
  readonly kind?: "switchover" | "failback";
  readonly trigger?: "automatic" | "manual";
  /** The monitor's lease (automatic failback): refused if it is no longer held. */
  readonly lease?: StateGuard | null;
}

/**
 * Planned change of primary, losing nothing: clean stop, catch-up confirmed,
 * the old primary started again as a standby of the target, then the
 * promotion, whose first commit already waits for the old primary.
 */
export async function switchover(context: OperationContext, request: SwitchoverRequest): Promise<FailoverRecord> {
  const { deps } = context;
  const kind = request.kind ?? "switchover";
  await context.refuseWhileBusy();
  const state = await context.state();
  const target = context.node(request.to);
  const from = context.node(state.primary);
  if (target.name === from.name) throw new RelevoError(ErrorCode.PreconditionFailed, `${target.name} is already the primary`);
  if (await deps.redis.exists(deps.keys.leases.backup)) {
    throw new RelevoError(ErrorCode.BackupInProgress, `a backup is running; wait for it to finish before a ${kind}`);
  }
  const [primaryFacts, targetFacts] = await Promise.all([context.facts(from), context.facts(target)]);
  const refusal = switchoverRefusal({ kind, from, target, primaryFacts, targetFacts });
  if (refusal) throw refusal;
  // The recorded state names the primary; the members must not contradict it (another writable, another branch of history).
  await refuseUnsafePromotion(context, target, from);
  const operation = await deps.journal.begin(
    newEntry({ kind, trigger: request.trigger ?? "manual", from: from.name, to: target.name, reason: `${kind} requested` }),
    request.lease ?? null,
  );
  return context.tracked(operation, () => runSwitchover(context, operation));
}

/**
 * Runs (or resumes) a switchover or failback from its journal: the old
 * primary stopped cleanly and fenced, the target's receipt of its last
 * record confirmed, the old primary started as the target's standby, the
 * target promoted (its commits waiting for the old primary from the first),
 * the other replicas repointed. Should the new primary die before the end,
 * a failover takes the journal over.
 */
export async function runSwitchover(context: OperationContext, operation: RunningOperation): Promise<FailoverRecord> {
  const { deps } = context;
  const entry = operation.entry;
  try {
    const from = context.node(entry.from);
    const target = context.node(entry.to!);
    const kind = entry.kind as "switchover" | "failback";
    if (!entry.times.stopped) await context.emitStage("failover:detected", operation, "info", `${kind}: ${from.name} → ${target.name}`);
    if (!operation.entry.times.promoted) {
      if (!(await promotedAlready(context, operation, target))) {
        if (deps.config.synchronous && !operation.entry.times.stopped) await commitsWillWaitForOld(context, from, target);
        const finalLsn = await stopOldPrimary(context, operation, from);
        const received = await waitForReceipt(context, target, finalLsn);
        if (received === null) {
          const why = `${target.name} did not receive ${from.name}'s last record (${finalLsn}) within ${deps.config.switchoverCatchUpTimeoutMs} ms`;
          await callOff(context, operation, { from, target, why });
        }
        if (!operation.entry.times.promoting) {
          // Nothing, unless the old primary had been seen further than its last checkpoint (it did not stop cleanly).
          const seen = await lastSeenPrimaryLsn(deps.redis, deps.keys.primaryLsn);
          const lostBytes = lostBytesAtPromotion([finalLsn, seen?.node === from.name ? seen.lsn : null], received!);
          await operation.record({ stage: "promoting", facts: { lostBytes } }, "promoting");
          await context.emitStage("failover:promoting", operation, "info", `promoting ${target.name}`);
        }
        operation.assertHeld();
        // Asynchronous mode: commits wait for nobody, so the old primary's
        // start would only lengthen the write gap; it follows afterwards.
        const following = deps.config.synchronous && (await followTargetBeforePromotion(context, from, target));
        await operation.record({ facts: { oldPrimaryFollows: following ? "yes" : "no" } });
      }
      // Synchronous mode: from its first commit, the new primary waits for
      // the old one, which holds everything it holds: the old primary is
      // eligible at once, and a new primary dying a moment later has a
      // replica to fail over to that lacks no acknowledged commit.
      const waitsForOld = deps.config.synchronous && operation.entry.facts.oldPrimaryFollows === "yes";
      await promote(context, target, operation, { commitsWaitFor: waitsForOld ? [from.name] : [] });
      await operation.record({ stage: "promoted" }, "promoted");
      await context.emitStage("failover:promoted", operation, "info", `${target.name} promoted: it accepts writes`);
    }
    await followNewPrimary(context, target, { skip: [from.name] });
    operation.assertHeld();
    const method = await oldPrimaryFollowing(context, from, target, {
      startedBefore: operation.entry.facts.oldPrimaryFollows === "yes",
      operation,
    });
    await operation.record({ stage: "completed", facts: { oldPrimaryRejoin: method } }, "completed");
    const record = recordOf(operation.entry, "completed", null);
    await deps.events.emit({
      kind: "failover:completed",
      severity: "info",
      node: target.name,
      message: `${kind} from ${from.name} to ${target.name} completed in ${record.durationMs} ms`,
      data: record,
    });
    await operation.finish();
    await deps.refreshTopology().catch(() => undefined);
    return record;
  } catch (error) {
    if (operation.settled) throw error; // called off
    const pastNoReturn = operation.entry.times.stopped !== undefined;
    if (!pastNoReturn || error instanceof StaleWriterError) return context.failed(operation, error, { pastNoReturn });
    const target = context.node(entry.to!);
    if (operation.entry.facts.oldPrimaryFollows === undefined) {
      // pg_promote runs only once this is recorded: the target is no primary
      // of this operation's making, and the old primary holds everything.
      // Resumed, the switchover would wait for a dead target forever.
      if (await missesEveryCheck(context, target).catch(() => false)) {
        await callOff(context, operation, {
          from: context.node(entry.from),
          target,
          why: `${target.name} stopped answering before its promotion (${(error as Error).message})`,
        });
      }
    } else if (await newPrimaryLost(context, target, { oldPrimary: context.node(entry.from) }).catch(() => false)) {
      await recordPromotionTakenOver(context, operation, target);
      return failoverTakesOver(context, operation, error as Error);
    }
    return context.failed(operation, error, { pastNoReturn });
  }
}

/**
 * The target may have been promoted (pg_promote ran, or was about to) and
 * is gone before the state said so: it is recorded now as promote() would
 * have recorded it — the primary, with the old primary as its synchronous
 * and eligible set when its commits waited for it — so that the failover
 * that takes over replaces the right primary and knows who holds its
 * acknowledged commits.
 */
async function recordPromotionTakenOver(context: OperationContext, operation: RunningOperation, target: NodeRef): Promise<void> {
  const { deps } = context;
  if ((await context.state()).primary === target.name) return;
  const waitedForOld = deps.config.synchronous && operation.entry.facts.oldPrimaryFollows === "yes";
  await recordAsPrimary(context, operation, target, waitedForOld ? [operation.entry.from] : []);
}

/**
 * Before writes stop: the target's commits set to wait for the old primary
 * (its slot there made first), and that setting put in force. A reload
 * reaches commits only once the checkpointer has read it — which it puts off
 * while a restartpoint runs behind schedule — so a CHECKPOINT (a restartpoint
 * on a standby) follows: it returns only after the checkpointer has been
 * through its loop, the reload read. Done here, its cost is the switchover's
 * length, not the write gap's.
 */
async function commitsWillWaitForOld(context: OperationContext, from: NodeRef, target: NodeRef): Promise<void> {
  const { deps } = context;
  await withNodeClient(target, deps.superuser, Math.max(deps.config.nodeTimeoutMs, 60000), async (client) => {
    await ensureReservedSlot(client, slotNameFor(from));
    await setSynchronousStandbys(client, [from.name]);
    await client.query("CHECKPOINT");
  });
}

/**
 * A resumed switchover whose target was promoted already (by the instance
 * that died): nothing before the promotion is done again. Stopping the old
 * primary now would only hold the new primary's commits back.
 */
async function promotedAlready(context: OperationContext, operation: RunningOperation, target: NodeRef): Promise<boolean> {
  if (operation.entry.facts.oldPrimaryFollows === undefined) return false;
  const facts = await context.facts(target);
  // pg_promote may have run: a target that does not answer is judged (a
  // failover may take over, with the old primary still its standby), never
  // worked around by stopping the old primary again.
  if (facts === null) throw new RelevoError(ErrorCode.CommandFailed, `${target.name} does not answer; it may have been promoted`);
  return !facts.inRecovery;
}

/**
 * Stops the old primary cleanly (again when resumed, idempotent: whatever
 * happened since, it takes no write now) and fences it while stopped; its
 * last checkpoint, which the target must receive.
 */
async function stopOldPrimary(context: OperationContext, operation: RunningOperation, from: NodeRef): Promise<string> {
  const { deps } = context;
  const entry = operation.entry;
  operation.assertHeld();
  // A fast shutdown sends every WAL record, its shutdown checkpoint included, to connected standbys.
  await deps.driver.stop(from, { mode: "fast", timeoutMs: 60000 });
  // Fenced while stopped: should the service die now, nothing starts it as a primary.
  await fenceNode(deps.driver, from, switchoverFenceReason(entry.kind as "switchover" | "failback", entry.id), deps.logger);
  if (!operation.entry.times.stopped) await operation.record({ stage: "stopped" }, "stopped");
  const finalLsn = await lastCheckpoint(context, from);
  if (!operation.entry.times.fenced) {
    await operation.record({ stage: "caught-up", facts: { finalLsn } }, "fenced");
    await context.emitStage("failover:fenced", operation, "info", `${from.name} stopped cleanly at ${finalLsn}`);
  }
  return finalLsn;
}

/**
 * The target did not receive the old primary's last record: the switchover
 * is called off and the old primary goes back to work, the journal closed
 * first. Only while the target is known to be a standby still: a target
 * that may have been promoted (a resumed run) leaves the journal to be
 * resumed, never two primaries.
 */
async function callOff(
  context: OperationContext,
  operation: RunningOperation,
  nodes: { from: NodeRef; target: NodeRef; why: string },
): Promise<never> {
  const { deps } = context;
  const { from, target } = nodes;
  const entry = operation.entry;
  const targetFacts = await context.facts(target);
  if (targetFacts ? !targetFacts.inRecovery : entry.facts.oldPrimaryFollows !== undefined) {
    throw new RelevoError(ErrorCode.CommandFailed, `${target.name} does not answer as a standby: ${nodes.why}`);
  }
  const why = `${nodes.why}; ${from.name} restarted as the primary`;
  const record = recordOf(entry, "failed", why);
  await operation.finish();
  await restoreAsPrimary(context, from, target);
  await deps.events.emit({
    kind: "failover:failed",
    severity: "warning",
    node: from.name,
    message: `${entry.kind} ${entry.id} abandoned: ${why}`,
    data: record,
  });
  throw new RelevoError(ErrorCode.PreconditionFailed, why);
}

/** The stopped node's last checkpoint (its shutdown checkpoint after a clean stop). */
async function lastCheckpoint(context: OperationContext, node: NodeRef): Promise<string> {
  const location = latestCheckpointLocation(await readControlData(context.deps.driver, node));
  if (!location) throw new RelevoError(ErrorCode.CommandFailed, `pg_controldata of ${node.name} shows no checkpoint location`);
  return location;
}

/** What `node` has received once it is past `lsn`; null when it is not within the time limit. */
async function waitForReceipt(context: OperationContext, node: NodeRef, lsn: string): Promise<string | null> {
  const deadline = monotonicNowMs() + context.deps.config.switchoverCatchUpTimeoutMs;
  while (monotonicNowMs() < deadline) {
    const facts = await context.facts(node);
    // Past the checkpoint record's start: the record itself was received.
    if (facts?.lsn && lsnToNumber(facts.lsn) > lsnToNumber(lsn)) return facts.lsn;
    await sleep(20);
  }
  return null;
}
