import { ErrorCode, RelevoError } from "../errors";
import { bytesBehind, lsnToNumber } from "../postgres/lsn";
import type { NodeRef } from "../nodes/node-driver";
import { hearsLiveSender, isSender, type NodePosition } from "../postgres/node-facts";
import { withName, type ClusterState } from "./cluster-state";
import type { StandbySeen } from "./primary-check";

/**
 * The failover monitor's decisions, as pure functions over what it observed:
 * each returns what to do and, where it holds back, the sentence that says
 * why (logged as the round's outcome). The monitor does the I/O around them.
 */

/** A standby joins the synchronous set once it is at most this far behind. */
export const JOIN_LAG_BYTES = 16 * 1024 * 1024;
/** After a failed automatic operation, the same one is not tried again for this long. */
export const RETRY_AFTER_MS = 30000;

export type Verdict = { readonly go: true } | { readonly go: false; readonly reason: string };

/** After a missed check: go on to ask the replicas only once enough checks in a row failed and no maintenance holds decisions. */
export function afterMissedCheck(options: { failures: number; threshold: number; maintenance: boolean }): Verdict {
  if (options.failures < options.threshold) return { go: false, reason: `missed ${options.failures} of ${options.threshold} checks` };
  if (options.maintenance) return { go: false, reason: "maintenance mode holds automatic failover back" };
  return { go: true };
}

/** The monitor holds back; `stale` when the members contradict the recorded state (reported in health and events). */
export type LossVerdict = { readonly go: true } | { readonly go: false; readonly reason: string; readonly stale: boolean };

/**
 * The members' word on the recorded primary, read from each of them (null:
 * it did not answer). A failure counts only when at least one replica that
 * is not fenced answers, none still hears from the primary (streaming and
 * heard from within `liveWithinMs`), and no member contradicts the recorded
 * state: a member that is writable, or that streams from a live sender
 * other than the recorded primary, means the record is stale (or a second
 * primary runs), and promoting on it would make two primaries. Fenced
 * members count for that too: a stale record may call the real primary
 * fenced. Relevo alone losing the primary is a network problem, not a dead
 * primary.
 */
export function replicasConfirmLoss(options: {
  readonly primary: NodeRef;
  readonly members: readonly MemberAnswer[];
  readonly liveWithinMs: number;
}): LossVerdict {
  const { primary } = options;
  const answered = options.members.filter((member) => member.node.name !== primary.name && member.position !== null);
  for (const { node, position } of answered) {
    if (!position!.inRecovery) {
      return {
        go: false,
        stale: true,
        reason: `${node.name} is writable but ${primary.name} is the recorded primary: the recorded state is stale or a second primary runs; no failover`,
      };
    }
    const receiver = position!.receiver;
    if (hearsLiveSender(receiver, options.liveWithinMs) && !isSender(receiver, primary)) {
      const sender = answered.find((other) => isSender(receiver, other.node))?.node.name ?? `${receiver.senderHost}:${receiver.senderPort}`;
      return {
        go: false,
        stale: true,
        reason: `${node.name} streams from ${sender}, not from the recorded primary ${primary.name}: the recorded state is stale; no failover`,
      };
    }
  }
  const replicas = answered.filter((member) => !member.fenced);
  if (replicas.length === 0) {
    return { go: false, stale: false, reason: "primary unreachable, and so is every replica: no failover (nothing to promote)" };
  }
  const stillStreaming = replicas.some(({ position }) => hearsLiveSender(position!.receiver, options.liveWithinMs));
  if (stillStreaming) {
    return { go: false, stale: false, reason: "primary unreachable from Relevo but a replica still streams from it: no failover" };
  }
  return { go: true };
}

/** A member's word, as the monitor asked it (position null: it did not answer). */
export interface MemberAnswer {
  readonly node: NodeRef;
  readonly position: NodePosition | null;
  readonly fenced: boolean;
}

/**
 * The primary the members show, when the recorded one is lost and they
 * contradict the record (see replicasConfirmLoss): exactly one member is
 * writable (and not left read-only by a fence), and at least one other
 * member answers and every one that does streams from it, heard within
 * `liveWithinMs`. That is the primary the cluster already runs on (the
 * record was rolled back, or a write was lost): the record is brought to
 * it rather than leaving it unmanaged. Null otherwise: two writable members,
 * or a writable one nobody follows, is a split brain or an unknown, which an
 * operator must look at.
 */
export function primaryToAdopt(options: {
  readonly recorded: NodeRef;
  readonly members: readonly MemberAnswer[];
  readonly liveWithinMs: number;
}): NodeRef | null {
  const answered = options.members.filter((member) => member.node.name !== options.recorded.name && member.position !== null);
  const writable = answered.filter(({ position }) => !position!.inRecovery);
  if (writable.length !== 1 || writable[0]!.position!.readOnly) return null;
  const primary = writable[0]!.node;
  const witnesses = answered.filter((member) => member.node.name !== primary.name);
  if (witnesses.length === 0) return null;
  const follow = witnesses.every(
    ({ position }) => hearsLiveSender(position!.receiver, options.liveWithinMs) && isSender(position!.receiver, primary),
  );
  return follow ? primary : null;
}

/**
 * Why an automatic operation is not tried again yet. One that failed because
 * the node driver's engine did not answer (it could not fence, stop or start
 * a node) is retried as soon as the engine answers again: a primary that died
 * while the Docker engine was away must not wait out the whole hold-off once
 * it is back.
 */
export interface HoldOff {
  readonly until: number;
  readonly untilDriverAnswers: boolean;
}

/** The hold-off after an automatic operation started (`error` null) or failed with `error`. */
export function holdOffAfter(error: unknown, now: number): HoldOff {
  return { until: now + RETRY_AFTER_MS, untilDriverAnswers: error instanceof RelevoError && error.code === ErrorCode.DockerUnavailable };
}

/** "clear": may run; "cooling": held off; "ask-driver": held off unless the driver answers now. */
export function coolDown(hold: HoldOff | undefined, now: number): "clear" | "cooling" | "ask-driver" {
  if (hold === undefined || now >= hold.until) return "clear";
  return hold.untilDriverAnswers ? "ask-driver" : "cooling";
}

/**
 * Synchronous mode: the standbys commits should wait for. Members of the set
 * that still stream stay; a streaming standby within JOIN_LAG_BYTES of the
 * primary joins. Asynchronous mode: none. Sorted, so the setting is stable.
 */
export function desiredSynchronousSet(options: {
  synchronous: boolean;
  current: readonly string[];
  streaming: ReadonlyMap<string, StandbySeen>;
  primaryLsn: string;
}): string[] {
  if (!options.synchronous) return [];
  const keep = options.current.filter((name) => options.streaming.has(name));
  const joining = [...options.streaming.values()]
    .filter((s) => !keep.includes(s.name) && s.flushLsn !== null && bytesBehind(options.primaryLsn, s.flushLsn) <= JOIN_LAG_BYTES)
    .map((s) => s.name);
  return [...keep, ...joining].sort();
}

/**
 * Members of the set the primary now waits for (quorum or sync) that have no
 * join point yet: the primary's LSN of this check becomes theirs.
 */
export function standbysToJoin(state: ClusterState, streaming: ReadonlyMap<string, StandbySeen>): string[] {
  return state.syncSet.filter((name) => {
    const seen = streaming.get(name);
    return (
      !state.eligible.includes(name) && state.joining[name] === undefined && (seen?.syncState === "quorum" || seen?.syncState === "sync")
    );
  });
}

/** Joining standbys that flushed past their join point: they hold every commit acknowledged since, and become eligible. */
export function standbysCaughtUp(state: ClusterState, streaming: ReadonlyMap<string, StandbySeen>): string[] {
  return Object.entries(state.joining)
    .filter(([name, lsn]) => {
      const seen = streaming.get(name);
      return seen?.flushLsn != null && lsnToNumber(seen.flushLsn) >= lsnToNumber(lsn);
    })
    .map(([name]) => name);
}

/** The state with `joinNow` given `lsn` as their join point and `caughtUp` made eligible (members of the set only). */
export function joinProgress(
  state: ClusterState,
  progress: { joinNow: readonly string[]; caughtUp: readonly string[]; lsn: string },
): ClusterState {
  const joining = { ...state.joining };
  let eligible = state.eligible;
  for (const name of progress.joinNow) joining[name] = progress.lsn;
  for (const name of progress.caughtUp) {
    delete joining[name];
    if (state.syncSet.includes(name)) eligible = withName(eligible, name);
  }
  return { ...state, joining, eligible };
}

/**
 * Whether the preferred node, streaming from the primary, is in sync enough
 * to fail back to: eligible (synchronous mode), or within the failover lag
 * limit (asynchronous mode).
 */
export function preferredInSync(options: {
  synchronous: boolean;
  preferred: string;
  eligible: readonly string[];
  standbys: readonly StandbySeen[];
  primaryLsn: string;
  maximumLagBytes: number;
}): boolean {
  const seen = options.standbys.find((s) => s.name === options.preferred && s.state === "streaming");
  if (seen?.flushLsn == null) return false;
  return options.synchronous
    ? options.eligible.includes(options.preferred)
    : bytesBehind(options.primaryLsn, seen.flushLsn) <= options.maximumLagBytes;
}
