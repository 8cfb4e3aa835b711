import { ErrorCode, RelevoError } from "../errors";
import type { NodeRef } from "../nodes/node-driver";
import { bytesBehind } from "../postgres/lsn";
import { streamsFrom, type NodeFacts } from "../postgres/node-facts";

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
