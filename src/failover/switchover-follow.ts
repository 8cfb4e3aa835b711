import { ErrorCode, RelevoError } from "../errors";
import type { NodeRef } from "../nodes/node-driver";
import { withNodeClient } from "../postgres/connection";
import { unfence } from "../postgres/fence-marker";
import { streamsFrom } from "../postgres/node-facts";
import {
  dropSlot,
  editStoppedNodeConf,
  ensureReservedSlot,
  setSynchronousStandbys,
  slotNameFor,
  STANDBY_SIGNAL,
} from "../postgres/replication-config";
import { sleep } from "../util/sleep";
import type { ClusterState, StateGuard } from "./cluster-state";
import type { OperationContext } from "./operation-context";
import type { RunningOperation } from "./operation-journal";
import { restartAsStandby, startStandby, type RejoinMethod } from "./rejoin";
import { monotonicNowMs } from "../util/monotonic-clock";

/**
 * How long the old primary, started as a standby of the target, has to
 * stream from it: before the promotion (writes are down meanwhile), and
 * after it (across the timeline switch) before it is restarted or rewound.
 */
const FOLLOW_TIMEOUT_MS = 10000;
/** How often a switchover polls while writes are down: every poll saved shortens the write gap. */
const POLL_MS = 25;

/**
 * Before the promotion: the cleanly stopped old primary started again as a
 * standby of the target (a cascading standby, while the target is one), over
 * a slot made on the target, and the target's commits set to wait for it
 * (loaded well before the promotion). On the promotion PostgreSQL's
 * walsender carries a cascading standby onto the new timeline over the same
 * connection, so the new primary's first commits wait for a standby that
 * already streams, not for a restart. False when it does not stream in time:
 * the promotion goes ahead without waiting for it (writes are down until
 * then), and it follows afterwards.
 */
export async function followTargetBeforePromotion(context: OperationContext, from: NodeRef, target: NodeRef): Promise<boolean> {
  const { deps } = context;
  await withNodeClient(target, deps.superuser, deps.config.nodeTimeoutMs, async (client) => {
    await ensureReservedSlot(client, slotNameFor(from));
    await setSynchronousStandbys(client, deps.config.synchronous ? [from.name] : []);
  });
  try {
    if (!streamsFrom(await context.facts(from), target)) {
      await context.stopQuietly(from);
      await startStandby(context, from, target);
    }
    // The target asked now and then, not at every poll: a target that died is found within a quarter second, and the write gap stays short.
    let askedAt = monotonicNowMs();
    const targetAnswers = async () => {
      if (monotonicNowMs() - askedAt < 250) return;
      askedAt = monotonicNowMs();
      if (!(await context.facts(target))?.inRecovery) throw new RelevoError(ErrorCode.CommandFailed, `${target.name} does not answer`);
    };
    if (await streamingWithin(context, from, target, { timeoutMs: FOLLOW_TIMEOUT_MS, whilePolling: targetAnswers })) return true;
    deps.logger.warn(
      { node: from.name, upstream: target.name },
      "old primary does not stream from the target: promoting without waiting for it",
    );
  } catch (error) {
    deps.logger.warn(
      { node: from.name, err: (error as Error).message },
      "old primary not started as a standby: promoting without waiting for it",
    );
  }
  // A target that died meanwhile is not promoted without anyone waiting: the
  // switchover is called off (see runSwitchover), the old primary restarted.
  if (!(await context.facts(target))?.inRecovery) {
    throw new RelevoError(ErrorCode.CommandFailed, `${target.name} stopped answering as a standby before its promotion`);
  }
  return false;
}

/**
 * After the promotion: the old primary follows the new timeline — started
 * before the promotion, it is given the time to cross the timeline switch;
 * else (or when it does not) it is restarted as a standby, rewound when it
 * cannot follow as it is. Throws as soon as the new primary stops
 * answering: whether a failover takes over is judged next.
 */
export async function oldPrimaryFollowing(
  context: OperationContext,
  from: NodeRef,
  target: NodeRef,
  options: { readonly startedBefore: boolean; readonly operation: RunningOperation },
): Promise<RejoinMethod> {
  const { config } = context.deps;
  const answers = async () => {
    const facts = await context.facts(target);
    if (!facts || facts.inRecovery) throw new RelevoError(ErrorCode.CommandFailed, `the new primary ${target.name} does not answer`);
  };
  const waits = followWaits({
    startedBefore: options.startedBefore,
    followTimeoutMs: FOLLOW_TIMEOUT_MS,
    detectionWindowMs: config.failoverCheckIntervalMs * config.failoverFailureThreshold,
  });
  if (await streamingWithin(context, from, target, { timeoutMs: waits.beforeLeavingMs, whilePolling: answers })) return "restart";
  await answers();
  // Not streaming for the detection window: the new primary's commits stop
  // waiting for it before it is restarted, rewound or reseeded (minutes,
  // perhaps), as the monitor would take it out (the monitor does nothing
  // while this operation holds the journal). Streaming again, it rejoins
  // the set the monitor's way, with a join point.
  await stopWaitingFor(context, { standby: from, primary: target, guard: options.operation.guard });
  if (await streamingWithin(context, from, target, { timeoutMs: waits.afterLeavingMs, whilePolling: answers })) return "restart";
  await answers();
  return restartAsStandby(context, options.operation, from, target);
}

/**
 * How long the old primary is given to stream from the new primary before
 * the new primary's commits stop waiting for it (the detection window, the
 * bound a standby that stops streaming leaves the set within), and after,
 * before it is restarted: FOLLOW_TIMEOUT_MS in all when it was started
 * before the promotion, none when it was not (it is not running). Pure.
 */
export function followWaits(options: {
  readonly startedBefore: boolean;
  readonly followTimeoutMs: number;
  readonly detectionWindowMs: number;
}): { readonly beforeLeavingMs: number; readonly afterLeavingMs: number } {
  if (!options.startedBefore) return { beforeLeavingMs: 0, afterLeavingMs: 0 };
  const beforeLeavingMs = Math.min(options.detectionWindowMs, options.followTimeoutMs);
  return { beforeLeavingMs, afterLeavingMs: options.followTimeoutMs - beforeLeavingMs };
}

/** The recorded state without `name` among the eligible (and joining) standbys: the first step out of the set. Pure. */
export function outOfEligible(state: ClusterState, name: string): ClusterState {
  const joining = { ...state.joining };
  delete joining[name];
  return { ...state, eligible: state.eligible.filter((other) => other !== name), joining };
}

/**
 * `standby` out of the synchronous set, in an order that never lets it be
 * promoted without every acknowledged commit: out of the eligible replicas
 * first, then out of the recorded set, then out of the primary's
 * synchronous_standby_names (from then on commits no longer wait for it).
 * Nothing when it is in neither.
 */
async function stopWaitingFor(
  context: OperationContext,
  options: { readonly standby: NodeRef; readonly primary: NodeRef; readonly guard: StateGuard },
): Promise<void> {
  const { deps } = context;
  const { standby, primary, guard } = options;
  const before = await context.state();
  if (!before.syncSet.includes(standby.name) && !before.eligible.includes(standby.name)) return;
  await deps.store.update(guard, (current) => outOfEligible(current ?? before, standby.name));
  const remaining = before.syncSet.filter((name) => name !== standby.name);
  await deps.store.update(guard, (current) => ({
    ...(current ?? before),
    syncSet: (current ?? before).syncSet.filter((name) => name !== standby.name),
  }));
  await withNodeClient(primary, deps.superuser, deps.config.nodeTimeoutMs, (client) => setSynchronousStandbys(client, remaining));
  await deps.events.emit({
    kind: "replication:sync-changed",
    severity: "warning",
    node: primary.name,
    message:
      remaining.length === 0
        ? `commits no longer wait for a standby (${standby.name} does not stream from ${primary.name} and may not be promoted until it caught up)`
        : `commits wait for ${remaining.join(", ")}; ${standby.name} left the set`,
    data: { standbys: remaining, added: [], removed: [standby.name] },
  });
}

/**
 * A switchover called off before the promotion: the old primary back as the
 * primary it was (stopped first: it may have been started as the target's
 * standby), the target's commits no longer set to wait for it, its slot
 * there dropped. It replays nothing it did not write itself: the target
 * had nothing more.
 */
export async function restoreAsPrimary(context: OperationContext, from: NodeRef, target: NodeRef): Promise<void> {
  const { deps } = context;
  await withNodeClient(target, deps.superuser, deps.config.nodeTimeoutMs, async (client) => {
    await setSynchronousStandbys(client, []);
    await dropSlot(client, slotNameFor(from));
  }).catch((error: Error) => deps.logger.warn({ node: target.name, err: error.message }, "target's settings for the old primary left"));
  await context.stopQuietly(from);
  await editStoppedNodeConf(deps.driver, from, { primary_conninfo: null, primary_slot_name: null });
  await deps.driver.removeFiles(from, [STANDBY_SIGNAL]);
  await unfence(deps.driver, from);
  await deps.driver.start(from, { timeoutMs: deps.config.startTimeoutMs });
}

/** Polls until `node` streams from `upstream` (at least once); false after `timeoutMs`. */
async function streamingWithin(
  context: OperationContext,
  node: NodeRef,
  upstream: NodeRef,
  options: { timeoutMs: number; whilePolling?: () => Promise<void> },
): Promise<boolean> {
  const deadline = monotonicNowMs() + options.timeoutMs;
  for (;;) {
    if (streamsFrom(await context.facts(node), upstream)) return true;
    if (monotonicNowMs() >= deadline) return false;
    await options.whilePolling?.();
    await sleep(POLL_MS);
  }
}
