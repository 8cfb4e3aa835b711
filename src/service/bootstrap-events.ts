import type { NodeBootstrapOutcome } from "../cluster/bootstrap";
import { UnreachableCaseError } from "../errors";
import type { EventDraft } from "../events/event-map";
import { seededFrom } from "../restore/replica-seed";

/** Pure: the event that records what bootstrap did with a node; null when it found the node running. */
export function outcomeEvent(outcome: NodeBootstrapOutcome): EventDraft | null {
  const node = outcome.node.name;
  switch (outcome.phase) {
    case "initialized":
      return {
        kind: "node:created",
        severity: "info",
        node,
        message: `${node} initialised as the primary`,
        data: { role: "primary", upstream: null },
      };
    case "seeded":
      return {
        kind: "node:created",
        severity: "info",
        node,
        message: `${node} ${seededFrom(outcome)}`,
        data: { role: "replica", upstream: outcome.upstream },
      };
    case "started":
      return { kind: "node:started", severity: "info", node, message: `${node} started`, data: {} };
    case "already-running":
      return null;
    case "fenced":
      return {
        kind: "node:fenced",
        severity: "warning",
        node,
        message: `${node} is fenced${outcome.reason ? ` (${outcome.reason})` : ""}: left stopped until it rejoins as a replica`,
        data: { method: "already-stopped", reason: outcome.reason ?? "fenced before this start" },
      };
    default:
      throw new UnreachableCaseError(outcome);
  }
}
