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
import type { OperationContext } from "./operation-context";
import { restartAsStandby, startStandby, type RejoinMethod } from "./rejoin";

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
    let askedAt = Date.now();
    const targetAnswers = async () => {
      if (Date.now() - askedAt < 250) return;
      askedAt = Date.now();
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
  options: { startedBefore: boolean },
): Promise<RejoinMethod> {
  const answers = async () => {
    const facts = await context.facts(target);
    if (!facts || facts.inRecovery) throw new RelevoError(ErrorCode.CommandFailed, `the new primary ${target.name} does not answer`);
  };
  const timeoutMs = options.startedBefore ? FOLLOW_TIMEOUT_MS : 0;
  if (await streamingWithin(context, from, target, { timeoutMs, whilePolling: answers })) return "restart";
  await answers();
  return restartAsStandby(context, from, target);
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
  const deadline = Date.now() + options.timeoutMs;
  for (;;) {
    if (streamsFrom(await context.facts(node), upstream)) return true;
    if (Date.now() >= deadline) return false;
    await options.whilePolling?.();
    await sleep(POLL_MS);
  }
}
