import type { EventDraft } from "../events/event-map";
import type { ClusterSnapshot, NodeSnapshot } from "./topology";

/**
 * What changed between two snapshots, as events. Pure. A change here is what
 * subscribers of `topologyChanged` hear about: role, reachability, streaming
 * state, lag crossing the alert threshold, the primary itself. Lag figures
 * moving within the threshold are not changes (they would publish every poll).
 */
export function topologyChanges(previous: ClusterSnapshot | null, next: ClusterSnapshot, lagAlertBytes: number): EventDraft[] {
  const events: EventDraft[] = [];
  if (previous === null) return events;
  if (previous.primary !== next.primary) {
    events.push({
      kind: "cluster:primary-changed",
      severity: next.primary === null ? "critical" : "warning",
      node: next.primary,
      message:
        next.primary === null
          ? `no primary (was ${previous.primary})`
          : `primary is now ${next.primary} (was ${previous.primary ?? "none"})`,
      data: { from: previous.primary, to: next.primary },
    });
  }
  for (const node of next.nodes) {
    const before = previous.nodes.find((candidate) => candidate.name === node.name);
    if (before) events.push(...nodeChanges(before, node, lagAlertBytes));
  }
  return events;
}

function nodeChanges(before: NodeSnapshot, after: NodeSnapshot, lagAlertBytes: number): EventDraft[] {
  const events: EventDraft[] = [];
  const node = after.name;
  if (before.reachable && !after.reachable) {
    events.push({
      kind: "node:down",
      severity: after.role === "primary" ? "critical" : "warning",
      node,
      message: `${node} is unreachable: ${after.error}`,
      data: { error: after.error ?? "unknown" },
    });
  } else if (!before.reachable && after.reachable) {
    events.push({ kind: "node:up", severity: "info", node, message: `${node} is reachable again`, data: {} });
  }
  if (before.roleConfirmed && after.roleConfirmed && before.role !== after.role) {
    events.push({
      kind: "node:role-changed",
      severity: "warning",
      node,
      message: `${node} is now ${after.role} (was ${before.role})`,
      data: { from: before.role, to: after.role },
    });
  }
  // Replication is only judged on a node that answered both times: an
  // unreachable replica is reported once, as node:down, not also as lost streaming.
  if (after.role === "replica" && before.role === "replica" && before.reachable && after.reachable) {
    const wasStreaming = before.replication?.state === "streaming";
    const isStreaming = after.replication?.state === "streaming";
    if (wasStreaming && !isStreaming) {
      const state = after.replication?.state ?? "unknown";
      events.push({
        kind: "replication:streaming-lost",
        severity: "warning",
        node,
        message: `${node} stopped streaming (${state})`,
        data: { state },
      });
    } else if (!wasStreaming && isStreaming) {
      events.push({ kind: "replication:streaming-restored", severity: "info", node, message: `${node} is streaming again`, data: {} });
    }
    const lagBefore = before.replication?.lagBytes ?? 0;
    const lagAfter = after.replication?.lagBytes ?? 0;
    if (lagBefore <= lagAlertBytes && lagAfter > lagAlertBytes) {
      events.push({
        kind: "replication:lag-high",
        severity: "warning",
        node,
        message: `${node} lags ${lagAfter} bytes (threshold ${lagAlertBytes})`,
        data: { lagBytes: lagAfter, thresholdBytes: lagAlertBytes },
      });
    } else if (lagBefore > lagAlertBytes && lagAfter <= lagAlertBytes) {
      events.push({
        kind: "replication:lag-normal",
        severity: "info",
        node,
        message: `${node} caught up (${lagAfter} bytes behind)`,
        data: { lagBytes: lagAfter, thresholdBytes: lagAlertBytes },
      });
    }
  }
  return events;
}

/** Whether subscribers should hear about `next` (the first snapshot always counts). */
export function isTopologyChange(previous: ClusterSnapshot | null, next: ClusterSnapshot, events: readonly EventDraft[]): boolean {
  return previous === null || events.length > 0 || previous.health !== next.health || previous.nodes.length !== next.nodes.length;
}
