import type { NodeRef } from "../nodes/node-driver";
import { hearsLiveSender, isSender, type NodePosition } from "../postgres/node-facts";
import { isAncestorPath } from "../postgres/timelines";

/**
 * Whether promoting a node is safe given what every member says of itself
 * now, whatever the recorded state says. The recorded state can be stale (a
 * Redis restored from an older file, a lost write) or simply wrong; the
 * members cannot be: a promotion is refused while another member is
 * writable, is on a branch of history the candidate has not followed, or
 * while the candidate still hears from a live sender. Pure.
 */

export interface PromotionGuardOptions {
  /** The primary being replaced: it is fenced (or found dead) before the promotion, so neither its word nor its stream counts. */
  readonly replacing: NodeRef;
  /** A sender heard from within this long is alive (the monitor's detection window). */
  readonly liveWithinMs: number;
}

/**
 * Why `candidate` must not be promoted, or null when nothing that answered
 * stands against it. `members`: every other member that answered (fenced
 * ones too: a stale state may call the real primary fenced).
 */
export function promotionHazard(candidate: NodePosition, members: readonly NodePosition[], options: PromotionGuardOptions): string | null {
  const others = members.filter((member) => member.node.name !== candidate.node.name && member.node.name !== options.replacing.name);
  const writable = others.find((member) => !member.inRecovery);
  if (writable) {
    return `${writable.node.name} is writable (a primary on timeline ${writable.timeline ?? "?"}), so promoting ${candidate.node.name} would make a second primary`;
  }
  const sender = liveSender(candidate, others, options);
  if (sender) return `${candidate.node.name} still streams from a live sender (${sender}): its upstream is not the primary being replaced`;
  for (const member of others) {
    const why = branchConflict(member, candidate);
    if (why) return why;
  }
  return null;
}

/** The candidate's live upstream other than the primary being replaced, named; null when it hears from none. */
function liveSender(candidate: NodePosition, others: readonly NodePosition[], options: PromotionGuardOptions): string | null {
  const receiver = candidate.receiver;
  if (!candidate.inRecovery || !hearsLiveSender(receiver, options.liveWithinMs)) return null;
  if (isSender(receiver, options.replacing)) return null;
  const member = others.find((other) => isSender(receiver, other.node));
  return member ? member.node.name : `${receiver.senderHost ?? "?"}:${receiver.senderPort ?? "?"}, not a member`;
}

/**
 * Whether `member` stands where the candidate's history cannot follow: on a
 * higher timeline, or on a timeline the candidate's history does not pass
 * through the same way (two promotions without a shared archive can both
 * pick timeline n+1: numbers alone prove nothing). A member whose history is
 * unknown is judged by its number alone.
 */
export function branchConflict(member: NodePosition, candidate: NodePosition): string | null {
  if (member.timeline === null || candidate.timeline === null) return null;
  if (member.timeline > candidate.timeline) {
    return `${member.node.name} is on timeline ${member.timeline}, past ${candidate.node.name}'s ${candidate.timeline}: a newer promotion happened`;
  }
  if (member.history === null || candidate.history === null) return null;
  if (!isAncestorPath(member.history, candidate.history)) {
    return `${member.node.name} is on timeline ${member.timeline} of another history than ${candidate.node.name}'s: the cluster has branched`;
  }
  return null;
}
