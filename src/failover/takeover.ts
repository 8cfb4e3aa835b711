import type { FailoverRecord } from "../events/event-map";
import type { NodeRef } from "../nodes/node-driver";
import { sleep } from "../util/sleep";
import { runFailover } from "./failover";
import { membersConfirmLoss } from "./loss-confirmation";
import { afterMissedCheck } from "./monitor-rules";
import { leftStoppedBySwitchover } from "./old-primary-candidate";
import { newEntry, recordOf, type OperationContext } from "./operation-context";
import type { RunningOperation } from "./operation-journal";
import { PrimaryChecker } from "./primary-check";
import { lastSeenPrimaryLsn } from "./primary-lsn";
import { newPrimaryLossConfirmed } from "./switchover-rules";
import { monotonicNowMs } from "../util/monotonic-clock";

/**
 * Whether `node` misses `RELEVO_FAILOVER_FAILURE_THRESHOLD` checks in a row,
 * one every `RELEVO_FAILOVER_CHECK_INTERVAL_MS`, as the monitor counts them:
 * false at the first check that answers.
 */
export async function missesEveryCheck(context: OperationContext, node: NodeRef): Promise<boolean> {
  const { deps } = context;
  const intervalMs = deps.config.failoverCheckIntervalMs;
  const checker = new PrimaryChecker({ credentials: deps.superuser, timeoutMs: intervalMs, clusterName: deps.config.clusterName });
  try {
    for (let failures = 1; ; failures += 1) {
      const started = monotonicNowMs();
      if ((await checker.check(node)).ok) return false;
      if (afterMissedCheck({ failures, threshold: deps.config.failoverFailureThreshold, maintenance: false }).go) return true;
      await sleep(Math.max(0, intervalMs - (monotonicNowMs() - started)));
    }
  } finally {
    checker.close();
  }
}

/**
 * Whether the new primary of a switchover or failback is lost, judged as
 * the monitor judges a primary: every check missed (missesEveryCheck), and
 * the members that answer have lost it too — or, when none is left to ask
 * but the old primary the switchover stopped, the driver shows the new
 * primary's server down (see newPrimaryLossConfirmed). For an operation
 * that finds the node it promoted — or may have promoted: `pg_promote` may
 * have run before the state recorded it — gone before it finished: the
 * monitor leaves the cluster alone while an operation holds the journal,
 * so the operation judges for it, in the same window. False in maintenance
 * mode (no automatic failover then).
 */
export async function newPrimaryLost(
  context: OperationContext,
  primary: NodeRef,
  options: { readonly oldPrimary: NodeRef },
): Promise<boolean> {
  const { deps } = context;
  if ((await deps.redis.get(deps.keys.maintenance)) === "1") return false;
  if (!(await missesEveryCheck(context, primary))) return false;
  const state = await context.state();
  const intervalMs = deps.config.failoverCheckIntervalMs;
  const verdict = await membersConfirmLoss({
    primary,
    nodes: deps.membership.nodes,
    fenced: state.fenced,
    superuser: deps.superuser,
    clusterName: deps.config.clusterName,
    liveWithinMs: intervalMs * deps.config.failoverFailureThreshold,
    timeoutMs: intervalMs,
  });
  const lost = newPrimaryLossConfirmed({
    verdict,
    members: verdict.members,
    stoppedOldPrimary: (await leftStoppedBySwitchover(context, options.oldPrimary)) ? options.oldPrimary.name : null,
    newPrimaryPhase: (await deps.driver.state(primary)).phase,
  });
  if (!lost && !verdict.go) deps.logger.warn({ node: primary.name }, verdict.reason);
  return lost;
}

/**
 * The new primary of a switchover or failback died before it finished: a
 * failover takes the journal over (the same lock, a new entry), as the
 * monitor would have started one had the switchover finished. The
 * switchover ends as failed, saying so; what is returned is the failover's
 * record.
 */
export async function failoverTakesOver(context: OperationContext, operation: RunningOperation, cause: Error): Promise<FailoverRecord> {
  const { deps } = context;
  const entry = operation.entry;
  const lost = entry.to!;
  const why = `the new primary ${lost} stopped answering before the ${entry.kind} finished (${cause.message})`;
  await deps.events.emit({
    kind: "failover:failed",
    severity: "critical",
    node: lost,
    message: `${entry.kind} ${entry.id}: ${why}; a failover takes over`,
    data: recordOf(entry, "failed", `${why}; a failover takes over`),
  });
  const seen = await lastSeenPrimaryLsn(deps.redis, deps.keys.primaryLsn);
  await operation.replace(
    newEntry({
      kind: "failover",
      trigger: "automatic",
      from: lost,
      reason: `${why}, in ${entry.kind} ${entry.id}`,
      facts: { lastPrimaryLsn: seen?.node === lost ? seen.lsn : null },
    }),
  );
  return runFailover(context, operation);
}
