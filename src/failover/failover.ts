import { ErrorCode, RelevoError } from "../errors";
import type { FailoverRecord } from "../events/event-map";
import type { NodeRef } from "../nodes/node-driver";
import { readNodeFacts, readNodePosition, type NodeFacts, type NodePosition } from "../postgres/node-facts";
import { readEndOfWal } from "../postgres/wal-end";
import { chooseCandidateOrStoppedOldPrimary, lostBytesAtPromotion } from "./candidate";
import { initialState, withName, type StateGuard } from "./cluster-state";
import { fenceNode } from "./fencing";
import { reusedTimelineCheck, setAsideReusedTimelines, startToPromote, stoppedOldPrimaryFacts } from "./old-primary-candidate";
import { newEntry, recordOf, type OperationContext } from "./operation-context";
import type { JournalEntry, RunningOperation } from "./operation-journal";
import { lastSeenPrimaryLsn } from "./primary-lsn";
import { followNewPrimary, promote } from "./promotion";
import { promotionHazard } from "./promotion-guard";

export interface FailoverRequest {
  readonly to?: string | null;
  readonly force?: boolean;
  readonly trigger: "automatic" | "manual";
  readonly reason: string;
  /** The monitor's lease (automatic failover): refused if it is no longer held. */
  readonly lease?: StateGuard | null;
}

/** Fences the primary and promotes the most advanced eligible replica (or `to`). */
export async function failover(context: OperationContext, request: FailoverRequest): Promise<FailoverRecord> {
  const { deps } = context;
  await context.refuseWhileBusy();
  const state = await context.state();
  const from = context.node(state.primary);
  if (request.to) context.node(request.to);
  if (request.to === from.name) throw new RelevoError(ErrorCode.PreconditionFailed, `${from.name} is already the primary`);
  if (request.trigger === "manual" && !request.force) {
    const facts = await readNodeFacts(from, deps.superuser, 2000, deps.config.clusterName);
    if (facts && !facts.inRecovery) {
      throw new RelevoError(
        ErrorCode.PreconditionFailed,
        `the primary ${from.name} is healthy: use switchover (no data loss), or failover with force to fence it anyway`,
      );
    }
  }
  // The old primary's last LSN seen (by the monitor, or at its promotion): the loss bound of an asynchronous failover.
  const seen = await lastSeenPrimaryLsn(deps.redis, deps.keys.primaryLsn);
  const lastPrimaryLsn = seen?.node === from.name ? seen.lsn : null;
  const operation = await deps.journal.begin(
    newEntry({
      kind: "failover",
      trigger: request.trigger,
      from: from.name,
      to: request.to ?? null,
      force: request.force ?? false,
      reason: request.reason,
      facts: { lastPrimaryLsn },
    }),
    request.lease ?? null,
  );
  return context.tracked(operation, () => runFailover(context, operation));
}

/** Runs (or resumes) a failover from its journal: detected, fenced, promoting, promoted, completed. */
export async function runFailover(context: OperationContext, operation: RunningOperation): Promise<FailoverRecord> {
  const { deps } = context;
  const entry = operation.entry;
  try {
    const from = context.node(entry.from);
    if (!entry.times.detected) {
      await operation.record({ stage: "detected" }, "detected");
      await context.emitStage("failover:detected", operation, "warning", `${entry.trigger} failover: primary ${from.name} ${entry.reason}`);
    }
    if (!operation.entry.times.fenced) {
      // Nobody to promote, or promoting would be unsafe: leave the old primary alone (it may come back) rather than fence it for nothing.
      await refuseUnsafePromotion(context, (await candidateFor(context, operation.entry)).node, from);
      operation.assertHeld();
      const method = await fenceNode(deps.driver, from, `failover ${entry.id}`, deps.logger);
      await deps.store.update(operation.guard, (state) => ({
        ...(state ?? initialState(from.name)),
        fenced: withName(state?.fenced ?? [], from.name),
      }));
      await operation.record({ stage: "fenced", facts: { fenceMethod: method } }, "fenced");
      await deps.events.emit({
        kind: "node:fenced",
        severity: "critical",
        node: from.name,
        message: `${from.name} fenced (${method})`,
        data: { method, reason: `failover ${entry.id}` },
      });
      await context.emitStage("failover:fenced", operation, "critical", `old primary ${from.name} fenced (${method})`);
    }
    let target: NodeRef;
    if (!operation.entry.times.promoted) {
      const choice = chosenBefore(context, operation.entry) ?? (await candidateFor(context, operation.entry));
      target = choice.node;
      if (choice.stopped) {
        // The old primary a switchover left stopped: started as a standby of nobody, to be promoted as any replica is.
        // The choice is recorded first: a start that fails, or an instance that dies, leaves it to be resumed.
        if (operation.entry.facts.preparedOldPrimary !== target.name) {
          operation.assertHeld();
          await operation.record({
            to: target.name,
            facts: { preparedOldPrimary: target.name, lostBytes: choice.lostBytes, promotedFrom: choice.lsn },
          });
        }
        await startToPromote(context, { node: target, lost: from, failoverId: entry.id });
      }
      await refuseUnsafePromotion(context, target, from);
      if (!operation.entry.times.promoting) {
        await operation.record(
          { stage: "promoting", to: target.name, facts: { lostBytes: choice.lostBytes, promotedFrom: choice.lsn } },
          "promoting",
        );
        await context.emitStage("failover:promoting", operation, "warning", `promoting ${target.name}`);
      }
      // The stopped old primary's new timeline is checked against the archive as it was before this promotion,
      // recorded once (a resumed run finishes a set-aside that failed partway: see setAsideReusedTimelines).
      const prepared = operation.entry.facts.preparedOldPrimary === target.name;
      if (prepared && typeof operation.entry.facts.reusedTimelineCheck !== "string") {
        operation.assertHeld();
        await operation.record({ facts: { reusedTimelineCheck: await reusedTimelineCheck(context, target) } });
      }
      const promoted = await promote(context, target, operation);
      const check = operation.entry.facts.reusedTimelineCheck;
      if (prepared && typeof check === "string") await setAsideReusedTimelines(context, { node: target, ...promoted, check });
      await operation.record({ stage: "promoted" }, "promoted");
      await context.emitStage("failover:promoted", operation, "warning", `${target.name} promoted: it accepts writes`);
    } else {
      target = context.node(operation.entry.to!);
    }
    await followNewPrimary(context, target, { skip: [from.name] });
    await operation.record({ stage: "completed", facts: await lossFromOldPrimaryWal(context, operation, from) }, "completed");
    const record = recordOf(operation.entry, "completed", null);
    await deps.events.emit({
      kind: "failover:completed",
      severity: "warning",
      node: target.name,
      message: `failover from ${from.name} to ${target.name} completed in ${record.durationMs} ms`,
      data: record,
    });
    await operation.finish();
    await deps.refreshTopology().catch(() => undefined);
    return record;
  } catch (error) {
    // Past no return once promoting, or once the stopped old primary is being made ready (it cannot run as it was).
    const pastNoReturn = operation.entry.times.promoting !== undefined || typeof operation.entry.facts.preparedOldPrimary === "string";
    return context.failed(operation, error, { pastNoReturn });
  }
}

/**
 * Every member is asked where it stands, right before the promotion: the
 * recorded state may be stale, the members are not (see promotionHazard).
 * A member that does not answer cannot object; one that answers and
 * contradicts the promotion stops it before anything is changed. A
 * switchover or failback asks too, before it stops the primary.
 */
export async function refuseUnsafePromotion(context: OperationContext, target: NodeRef, from: NodeRef): Promise<void> {
  const { config, superuser, membership } = context.deps;
  const positions = (
    await Promise.all(membership.nodes.map((node) => readNodePosition(node, superuser, config.nodeTimeoutMs, config.clusterName)))
  ).filter((position): position is NodePosition => position !== null);
  const candidate = positions.find((position) => position.node.name === target.name);
  // A target that does not answer is promote()'s to report; a target already promoted (a resumed operation) is the primary.
  if (!candidate) return;
  const hazard = promotionHazard(candidate, positions, {
    replacing: from,
    liveWithinMs: config.failoverCheckIntervalMs * config.failoverFailureThreshold,
  });
  if (hazard)
    throw new RelevoError(ErrorCode.PromotionUnsafe, `${target.name} not promoted: ${hazard}`, { details: { node: target.name } });
}

/**
 * The loss measured against the fenced old primary's own WAL, read once the
 * promoted node accepts writes (it lengthens no write gap): the last LSN the
 * monitor saw may be up to a check old, and commits acknowledged since then
 * that the promoted node never received are lost too. Kept as it was when
 * that WAL cannot be read (a node that was stopped, not killed, or whose
 * storage is gone).
 */
async function lossFromOldPrimaryWal(
  context: OperationContext,
  operation: RunningOperation,
  from: NodeRef,
): Promise<JournalEntry["facts"]> {
  const { deps } = context;
  const { facts } = operation.entry;
  if (typeof facts.promotedFrom !== "string") return {};
  const walEnd = await readEndOfWal(deps.driver, from, { timeoutMs: deps.config.nodeTimeoutMs * 10 }).catch((error: Error) => {
    deps.logger.warn(
      { node: from.name, err: error.message },
      "the old primary's WAL could not be read: loss measured from its last LSN seen",
    );
    return null;
  });
  if (walEnd === null) return {};
  const lastSeen = typeof facts.lastPrimaryLsn === "string" ? facts.lastPrimaryLsn : null;
  return { oldPrimaryWalEnd: walEnd, lostBytes: lostBytesAtPromotion([walEnd, lastSeen], facts.promotedFrom) };
}

interface Chosen {
  readonly node: NodeRef;
  readonly lostBytes: number | null;
  /** The chosen node's position when chosen (recorded as `promotedFrom`). */
  readonly lsn: string | null;
  /** The old primary a switchover left stopped: it must be started first. */
  readonly stopped: boolean;
}

/**
 * The target a resumed run already chose, from its journal: once promoting,
 * or once it began to make the switchover's stopped old primary ready (its
 * marker and control file may no longer say what they said when it was
 * chosen): that preparation and start are run again until the promotion
 * is recorded (by then the node ran). Null when nothing was chosen yet.
 */
function chosenBefore(context: OperationContext, entry: JournalEntry): Chosen | null {
  const prepared = entry.to !== null && entry.facts.preparedOldPrimary === entry.to;
  if (!entry.to || !(entry.times.promoting || prepared)) return null;
  const { lostBytes, promotedFrom } = entry.facts;
  return {
    node: context.node(entry.to),
    lostBytes: typeof lostBytes === "number" ? lostBytes : null,
    lsn: typeof promotedFrom === "string" ? promotedFrom : null,
    stopped: prepared && !entry.times.promoting,
  };
}

/**
 * The replica to promote now: reachable, eligible (unless forced), the most
 * advanced (see chooseCandidate) — else the old primary a switchover or
 * failback left stopped, under the same rules (`stopped`: it must be
 * started first; see chooseCandidateOrStoppedOldPrimary).
 */
async function candidateFor(context: OperationContext, entry: JournalEntry): Promise<Chosen> {
  const { config } = context.deps;
  const state = await context.state();
  const replicas = context.deps.membership.nodes.filter((node) => node.name !== entry.from && !state.fenced.includes(node.name));
  const facts = (await Promise.all(replicas.map((node) => context.facts(node)))).filter(
    (fact): fact is NodeFacts => fact !== null && fact.inRecovery,
  );
  const stoppedOldPrimary = await stoppedOldPrimaryFacts(context, {
    lost: context.node(entry.from),
    exclude: [entry.from, ...state.fenced],
  });
  const choice = chooseCandidateOrStoppedOldPrimary(facts, stoppedOldPrimary, {
    to: entry.to,
    force: entry.force,
    synchronous: config.synchronous,
    eligible: state.eligible,
    lastPrimaryLsn: typeof entry.facts.lastPrimaryLsn === "string" ? entry.facts.lastPrimaryLsn : null,
    maximumLagBytes: config.failoverMaximumLagBytes,
    preferred: config.preferredPrimary,
  });
  if (!choice.ok) throw new RelevoError(ErrorCode.NoEligibleReplica, choice.reason);
  const chosen = [...facts, ...(stoppedOldPrimary ? [stoppedOldPrimary.facts] : [])].find((fact) => fact.node.name === choice.node.name);
  return { node: choice.node, lostBytes: choice.lostBytes, lsn: chosen?.lsn ?? null, stopped: chosen === stoppedOldPrimary?.facts };
}
