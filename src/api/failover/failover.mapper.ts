import type { FailoverRecord } from "../../events/event-map";
import type { ClusterState } from "../../failover/cluster-state";
import type { JournalEntry } from "../../failover/operation-journal";
import type { Failover, FailoverOperation, FailoverState } from "./failover.type";

/** Domain records → GraphQL objects. Enum values are the domain's own strings. */
export function toFailover(record: FailoverRecord): Failover {
  return { ...record } as Failover;
}

export function toFailoverOperation(entry: JournalEntry): FailoverOperation {
  return {
    id: entry.id,
    kind: entry.kind,
    trigger: entry.trigger,
    stage: entry.stage,
    from: entry.from,
    to: entry.to,
    startedAt: entry.startedAt,
  } as FailoverOperation;
}

export function toFailoverState(state: ClusterState | null, operation: JournalEntry | null, maintenance: boolean): FailoverState {
  return {
    primary: state?.primary ?? null,
    epoch: state?.epoch ?? null,
    fenced: [...(state?.fenced ?? [])],
    syncSet: [...(state?.syncSet ?? [])],
    eligible: [...(state?.eligible ?? [])],
    maintenance,
    operation: operation ? toFailoverOperation(operation) : null,
  };
}
