import { ErrorCode, RelevoError } from "../errors";
import type { NodeProcessState, NodeRef } from "../nodes/node-driver";
import { stoppedAsStandby, stoppedCleanlyAsPrimary } from "../postgres/control-data";
import { bytesBehind } from "../postgres/lsn";
import { streamsFrom, type NodeFacts } from "../postgres/node-facts";
import type { LossVerdict, MemberAnswer } from "./monitor-rules";

/** A replica is switched over to only when it is at most this far behind (switchover, failback). */
export const SWITCHOVER_MAX_LAG_BYTES = 16 * 1024 * 1024;

/**
 * Why a switchover (or failback) to `target` may not begin, as an error
 * with its code; null when it may. A planned change of primary loses
 * nothing only when the primary answers as one and the target streams from
 * it close behind: the old primary's last record must reach the target
 * within the catch-up limit, or the switchover is called off.
 */
export function switchoverRefusal(options: {
  readonly kind: "switchover" | "failback";
  readonly from: NodeRef;
  readonly target: NodeRef;
  readonly primaryFacts: NodeFacts | null;
  readonly targetFacts: NodeFacts | null;
}): RelevoError | null {
  const { kind, from, target, primaryFacts, targetFacts } = options;
  if (!primaryFacts || primaryFacts.inRecovery || !primaryFacts.lsn) {
    return new RelevoError(ErrorCode.PreconditionFailed, `the primary ${from.name} does not answer as a primary: use failover`);
  }
  if (!streamsFrom(targetFacts, from)) {
    return new RelevoError(ErrorCode.PreconditionFailed, `${target.name} is not a replica streaming from ${from.name}; rejoin it first`);
  }
  // A receiver that streams but has received nothing yet is as far behind as can be.
  const lag = bytesBehind(primaryFacts.lsn, targetFacts!.lsn ?? "0/0");
  if (lag > SWITCHOVER_MAX_LAG_BYTES) {
    return new RelevoError(
      ErrorCode.PreconditionFailed,
      `${target.name} is ${lag} bytes behind (at most ${SWITCHOVER_MAX_LAG_BYTES} for a ${kind}); retry once it has caught up`,
      { details: { node: target.name, lagBytes: lag } },
    );
  }
  return null;
}

/** The reason a switchover or failback writes into the fence marker of the old primary it stops (see stopOldPrimary). */
export function switchoverFenceReason(kind: "switchover" | "failback", id: string): string {
  return `${kind} ${id}`;
}

/**
 * Whether a fence marker's reason says a switchover or failback stopped the
 * node as its old primary — not a failover, a split brain, a rejoin or a
 * start-up, whose nodes may hold a branch of history of their own. The
 * marker leaves with the first start as a standby of the target (or when
 * the switchover is called off), so a node still carrying it never followed
 * the target. Pure.
 */
export function fencedBySwitchover(reason: string | null | undefined): boolean {
  return /^(switchover|failback) [0-9a-f-]{36}$/.test(reason ?? "");
}

/**
 * The reason written into the marker of a switchover's stopped old primary
 * when failover `id` begins to make it ready for promotion (see
 * startToPromote): it stays fenced, and still known as that old primary,
 * until it runs as a standby of nobody.
 */
export function takeoverPreparedReason(failoverId: string): string {
  return `prepared for takeover ${failoverId}`;
}

/**
 * Whether a stopped node is the old primary of a switchover or failback as
 * that operation left it, from its fence marker's reason and its control
 * file: fenced by the switchover and stopped cleanly as a primary (its WAL
 * ends with the shutdown checkpoint the target received) — or already
 * being made ready for promotion by a failover that did not see it run
 * (takeoverPreparedReason): a start that failed, or an instance that died,
 * leaves it stopped as a standby (a standby writes no WAL of its own, so
 * its WAL still ends where the switchover left it), and a resumed or later
 * failover must still find it, or the cluster is left without a primary.
 * Pure.
 */
export function leftAsStoppedOldPrimary(markerReason: string | null | undefined, controlData: string): boolean {
  if (fencedBySwitchover(markerReason)) return stoppedCleanlyAsPrimary(controlData);
  if (/^prepared for takeover [0-9a-f-]{36}$/.test(markerReason ?? "")) {
    return stoppedCleanlyAsPrimary(controlData) || stoppedAsStandby(controlData);
  }
  return false;
}

/**
 * Whether the new primary of a switchover or failback is confirmed lost,
 * once every check of it failed: the members' verdict (see
 * replicasConfirmLoss), or — when no member but the switchover's stopped
 * old primary is left to ask (two nodes) — the driver's word that the new
 * primary's server is not running. A stopped old primary witnesses
 * nothing, and without it the cluster would wait for a dead node for ever;
 * a server that is still running or frozen (it may resume) is not lost on
 * Relevo's word alone. Pure.
 */
export function newPrimaryLossConfirmed(options: {
  readonly verdict: LossVerdict;
  readonly members: readonly MemberAnswer[];
  /** The switchover's old primary, when it is stopped as the switchover left it (see fencedBySwitchover). */
  readonly stoppedOldPrimary: string | null;
  readonly newPrimaryPhase: NodeProcessState["phase"];
}): boolean {
  const { verdict, members, stoppedOldPrimary, newPrimaryPhase } = options;
  if (verdict.go) return true;
  if (verdict.stale || stoppedOldPrimary === null) return false;
  if (newPrimaryPhase !== "stopped" && newPrimaryPhase !== "absent") return false;
  return members.every((member) => member.position === null || member.fenced);
}
