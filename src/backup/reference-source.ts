import type { ClusterSnapshot, NodeSnapshot } from "../cluster/topology";

/** Which replicas a failover would promote now (the failover's own rules, see failover/candidate). */
export interface FailoverEligibility {
  /** Synchronous mode: only the replicas recorded as holding every acknowledged commit. */
  readonly synchronous: boolean;
  /** The replicas recorded as eligible (in sync) in the cluster state. */
  readonly eligible: readonly string[];
  /** Asynchronous mode: a replica lagging more is not promoted automatically. */
  readonly maximumLagBytes: number;
}

export type ReferenceSourceChoice = { readonly ok: true; readonly node: string } | { readonly ok: false; readonly reason: string };

function isFailoverCandidate(node: NodeSnapshot, rules: FailoverEligibility): boolean {
  if (!node.reachable || node.role !== "replica") return false;
  if (rules.synchronous) return rules.eligible.includes(node.name);
  return (node.replication?.lagBytes ?? Infinity) <= rules.maximumLagBytes;
}

/**
 * The replica whose replay may be paused for a moment to take a reference
 * point. Pure. A streaming replica, and not the only one a failover could
 * promote now: a failover must never find its one candidate paused (and
 * behind). Replicas no failover would promote come first, then the least
 * lagging (it reaches the backup's stop soonest).
 */
export function chooseReferenceReplica(snapshot: ClusterSnapshot | null, rules: FailoverEligibility): ReferenceSourceChoice {
  if (!snapshot?.primary) return { ok: false, reason: "no primary is known" };
  const streaming = snapshot.nodes.filter((node) => node.reachable && node.role === "replica" && node.replication?.state === "streaming");
  if (streaming.length === 0) return { ok: false, reason: "no replica is streaming" };
  const candidates = snapshot.nodes.filter((node) => isFailoverCandidate(node, rules)).map((node) => node.name);
  const usable = streaming.filter((node) => !candidates.includes(node.name) || candidates.length > 1);
  const lag = (node: NodeSnapshot): number => node.replication?.lagBytes ?? Infinity;
  const best = usable.sort((a, b) => Number(candidates.includes(a.name)) - Number(candidates.includes(b.name)) || lag(a) - lag(b))[0];
  if (best) return { ok: true, node: best.name };
  return { ok: false, reason: `${candidates[0]} is the only replica a failover could promote: its replay is not paused` };
}
