import { bytesBehind } from "../postgres/lsn";
import { byMostAdvanced, type NodeFacts } from "../postgres/node-facts";
import type { NodeRef } from "../nodes/node-driver";

/** What decides whether a replica may be promoted by a failover. */
export interface CandidateRules {
  /** Promote this one (an operator's choice), or the most advanced eligible one when null or empty. */
  readonly to: string | null;
  /** Promote even a replica that may lack acknowledged commits. */
  readonly force: boolean;
  /** Synchronous mode: only a standby recorded as holding every acknowledged commit is eligible. */
  readonly synchronous: boolean;
  /** The standbys recorded as eligible (in sync) in the cluster state. */
  readonly eligible: readonly string[];
  /** The old primary's last LSN seen: the bound of what an asynchronous failover loses. */
  readonly lastPrimaryLsn: string | null;
  /** Asynchronous mode: the most a promoted replica may trail that LSN. */
  readonly maximumLagBytes: number;
  /** Preferred among equally advanced replicas. */
  readonly preferred: string;
}

export type CandidateChoice =
  { readonly ok: true; readonly node: NodeRef; readonly lostBytes: number | null } | { readonly ok: false; readonly reason: string };

/** Bytes a replica lacks of what the old primary had (null when either LSN is unknown). */
export function lostBytesOf(fact: NodeFacts, lastPrimaryLsn: string | null): number | null {
  return lastPrimaryLsn === null || fact.lsn === null ? null : bytesBehind(lastPrimaryLsn, fact.lsn);
}

/**
 * What a promoted node lacks of the old primary's WAL: the bytes between
 * what it had received and the furthest point the old primary is known to
 * have reached (its last checkpoint, the last LSN seen on it, the end of its
 * WAL; unknown ones null). 0 when it has all of them.
 */
export function lostBytesAtPromotion(oldPrimaryReached: readonly (string | null)[], received: string): number {
  return Math.max(0, ...oldPrimaryReached.map((lsn) => (lsn === null ? 0 : bytesBehind(lsn, received))));
}

/** Why `fact`'s replica may not be promoted under `rules`; null when it may. */
export function ineligibility(fact: NodeFacts, rules: CandidateRules): string | null {
  if (rules.force) return null;
  if (rules.synchronous) {
    return rules.eligible.includes(fact.node.name)
      ? null
      : `${fact.node.name} is not known to hold every acknowledged commit (not an in-sync standby)`;
  }
  const lost = lostBytesOf(fact, rules.lastPrimaryLsn);
  if (lost === null) return `${fact.node.name}'s lag behind the old primary is unknown`;
  return lost <= rules.maximumLagBytes ? null : `${fact.node.name} was ${lost} bytes behind (limit ${rules.maximumLagBytes})`;
}

/**
 * The replica to promote, out of the replicas that answered (in recovery):
 * the one asked for if it is eligible, else the most advanced eligible one.
 * Pure: the reasons each was passed over come back when none is left.
 */
export function chooseCandidate(replicas: readonly NodeFacts[], rules: CandidateRules): CandidateChoice {
  if (replicas.length === 0) return { ok: false, reason: "no replica answers: nothing can be promoted" };
  // An empty name (failover(to: "")) asks for no one in particular.
  if (rules.to) {
    const fact = replicas.find((candidate) => candidate.node.name === rules.to);
    if (!fact) return { ok: false, reason: `${rules.to} does not answer as a replica` };
    const why = ineligibility(fact, rules);
    if (why) return { ok: false, reason: `${why}; failover with force to promote it anyway` };
    return { ok: true, node: fact.node, lostBytes: lostBytesOf(fact, rules.lastPrimaryLsn) };
  }
  const reasons: string[] = [];
  for (const fact of [...replicas].sort(byMostAdvanced(rules.preferred))) {
    const why = ineligibility(fact, rules);
    if (!why) return { ok: true, node: fact.node, lostBytes: lostBytesOf(fact, rules.lastPrimaryLsn) };
    reasons.push(why);
  }
  return { ok: false, reason: `no eligible replica: ${reasons.join("; ")}` };
}

/**
 * The old primary a switchover or failback left stopped, as a candidate:
 * its facts (its position: the end of its WAL, read where it stopped), and
 * where the lost new primary's own WAL ends, read offline (null when it
 * cannot be read, or the node may still be writing).
 */
export interface StoppedOldPrimary {
  readonly facts: NodeFacts;
  readonly lostPrimaryWalEnd: string | null;
}

/**
 * The replica to promote (chooseCandidate); when none may be, the cleanly
 * stopped old primary of a switchover or failback whose new primary is
 * lost, under the same rules: its WAL, read where it stopped, is its
 * position. It holds every commit acknowledged before the switchover; what
 * it lacks is what the lost new primary wrote since, the loss an
 * asynchronous failover is allowed within the lag limit — measured to the
 * furthest of the new primary's last LSN seen and the end of its own WAL:
 * the LSN seen may be as old as the new primary's promotion (nothing is
 * recorded while the switchover runs), and the new primary may have
 * written much since. When that WAL cannot be read the loss is unknown:
 * not eligible unless forced. In synchronous mode it is eligible only when
 * recorded so (the new primary's commits waited for it), else only forced.
 * Pure.
 */
export function chooseCandidateOrStoppedOldPrimary(
  replicas: readonly NodeFacts[],
  stoppedOldPrimary: StoppedOldPrimary | null,
  rules: CandidateRules,
): CandidateChoice {
  const choice = chooseCandidate(replicas, rules);
  if (choice.ok || stoppedOldPrimary === null) return choice;
  const { facts, lostPrimaryWalEnd } = stoppedOldPrimary;
  if (rules.to && rules.to !== facts.node.name) return choice;
  const ownRules = { ...rules, lastPrimaryLsn: lostPrimaryWalEnd === null ? null : furthestLsn(rules.lastPrimaryLsn, lostPrimaryWalEnd) };
  const own = chooseCandidate([facts], ownRules);
  if (own.ok) return own;
  const unreadable = lostPrimaryWalEnd === null && !rules.synchronous ? " (the end of the lost primary's WAL cannot be read)" : "";
  if (rules.to || replicas.length === 0) return { ok: false, reason: `${own.reason}${unreadable}` };
  return { ok: false, reason: `${choice.reason}; ${ineligibility(facts, ownRules)}${unreadable}` };
}

/** The further of two LSNs, the first possibly unknown. */
function furthestLsn(known: string | null, other: string): string {
  return known !== null && bytesBehind(known, other) > 0 ? known : other;
}
