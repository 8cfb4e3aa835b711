import { ErrorCode, RelevoError } from "../errors";
import type { FailoverRecord } from "../events/event-map";
import type { NodeRef } from "../nodes/node-driver";
import { latestCheckpointLocation, readControlData } from "../postgres/control-data";
import { bytesBehind, lsnToNumber } from "../postgres/lsn";
import { unfence } from "../postgres/fence-marker";
import { streamsFrom } from "../postgres/node-facts";
import { sleep } from "../util/sleep";
import type { StateGuard } from "./cluster-state";
import { fenceNode } from "./fencing";
import { newEntry, recordOf, type OperationContext } from "./operation-context";
import type { RunningOperation } from "./operation-journal";
import { followNewPrimary, promote } from "./promotion";
import { restartAsStandby } from "./rejoin";

/** A replica promoted only when it is at most this far behind (switchover, failback). */
const SWITCHOVER_MAX_LAG_BYTES = 16 * 1024 * 1024;
/** How long a switchover waits for the target to receive the old primary's last record. */
const CATCH_UP_TIMEOUT_MS = 30000;

export interface SwitchoverRequest {
  readonly to: string;
  /** A failback is a switchover back to the preferred primary. */
  readonly kind?: "switchover" | "failback";
  readonly trigger?: "automatic" | "manual";
  /** The monitor's lease (automatic failback): refused if it is no longer held. */
  readonly lease?: StateGuard | null;
}

/** Planned change of primary, losing nothing: clean stop, catch-up confirmed, promotion, old primary restarted as a standby. */
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
  if (!primaryFacts || primaryFacts.inRecovery) {
    throw new RelevoError(ErrorCode.PreconditionFailed, `the primary ${from.name} does not answer as a primary: use failover`);
  }
  if (!streamsFrom(targetFacts, from)) {
    throw new RelevoError(ErrorCode.PreconditionFailed, `${target.name} is not a replica streaming from ${from.name}; rejoin it first`);
  }
  const lag = bytesBehind(primaryFacts.lsn!, targetFacts!.lsn ?? "0/0");
  if (lag > SWITCHOVER_MAX_LAG_BYTES) {
    throw new RelevoError(
      ErrorCode.PreconditionFailed,
      `${target.name} is ${lag} bytes behind (at most ${SWITCHOVER_MAX_LAG_BYTES} for a ${kind}); retry once it has caught up`,
    );
  }
  const operation = await deps.journal.begin(
    newEntry({ kind, trigger: request.trigger ?? "manual", from: from.name, to: target.name, reason: `${kind} requested` }),
    request.lease ?? null,
  );
  return context.tracked(operation, () => runSwitchover(context, operation));
}

/** Runs (or resumes) a switchover or failback from its journal. */
export async function runSwitchover(context: OperationContext, operation: RunningOperation): Promise<FailoverRecord> {
  const { deps } = context;
  const entry = operation.entry;
  try {
    const from = context.node(entry.from);
    const target = context.node(entry.to!);
    const kind = entry.kind as "switchover" | "failback";
    if (!entry.times.stopped) await context.emitStage("failover:detected", operation, "info", `${kind}: ${from.name} → ${target.name}`);
    if (!operation.entry.times.promoted) {
      // Stopped again when resumed (idempotent): whatever happened since, it takes no write now.
      // A fast shutdown sends every WAL record, its shutdown checkpoint included, to connected standbys.
      operation.assertHeld();
      await deps.driver.stop(from, { mode: "fast", timeoutMs: 60000 });
      // Fenced while stopped: should the service die now, nothing starts it as a primary.
      await fenceNode(deps.driver, from, `${kind} ${entry.id}`, deps.logger);
      if (!operation.entry.times.stopped) await operation.record({ stage: "stopped" }, "stopped");
      const finalLsn = await lastCheckpoint(context, from);
      if (!operation.entry.times.fenced) {
        await operation.record({ stage: "caught-up", facts: { finalLsn } }, "fenced");
        await context.emitStage("failover:fenced", operation, "info", `${from.name} stopped cleanly at ${finalLsn}`);
      }
      if (!(await waitForReceipt(context, target, finalLsn))) {
        // Nothing changed yet: the old primary goes back to work, the journal closed first.
        const why = `${target.name} did not receive ${from.name}'s last record (${finalLsn}) within ${CATCH_UP_TIMEOUT_MS} ms; ${from.name} restarted as the primary`;
        await unfence(deps.driver, from);
        const record = recordOf(operation.entry, "failed", why);
        await operation.finish();
        await deps.driver.start(from, { timeoutMs: deps.config.startTimeoutMs });
        await deps.events.emit({
          kind: "failover:failed",
          severity: "warning",
          node: from.name,
          message: `${kind} ${entry.id} abandoned: ${why}`,
          data: record,
        });
        throw new RelevoError(ErrorCode.PreconditionFailed, why);
      }
      if (!operation.entry.times.promoting) {
        await operation.record({ stage: "promoting", facts: { lostBytes: 0 } }, "promoting");
        await context.emitStage("failover:promoting", operation, "info", `promoting ${target.name}`);
      }
      await promote(context, target, operation);
      await operation.record({ stage: "promoted" }, "promoted");
      await context.emitStage("failover:promoted", operation, "info", `${target.name} promoted: it accepts writes`);
    }
    await followNewPrimary(context, target, { skip: [from.name] });
    // The old primary stopped cleanly at a point the new one has: it follows without a rewind.
    operation.assertHeld();
    const method = await restartAsStandby(context, from, target);
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
    if (operation.settled) throw error; // the clean abort above
    return context.failed(operation, error, { pastNoReturn: operation.entry.times.stopped !== undefined });
  }
}

/** The stopped node's last checkpoint (its shutdown checkpoint after a clean stop). */
async function lastCheckpoint(context: OperationContext, node: NodeRef): Promise<string> {
  const location = latestCheckpointLocation(await readControlData(context.deps.driver, node));
  if (!location) throw new RelevoError(ErrorCode.CommandFailed, `pg_controldata of ${node.name} shows no checkpoint location`);
  return location;
}

async function waitForReceipt(context: OperationContext, node: NodeRef, lsn: string): Promise<boolean> {
  const deadline = Date.now() + CATCH_UP_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const facts = await context.facts(node);
    // Past the checkpoint record's start: the record itself was received.
    if (facts?.lsn && lsnToNumber(facts.lsn) > lsnToNumber(lsn)) return true;
    await sleep(20);
  }
  return false;
}
