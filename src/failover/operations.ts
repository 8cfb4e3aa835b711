import { addReplica, removeReplica } from "../cluster/replicas";
import type { FailoverRecord } from "../events/event-map";
import type { NodeRef } from "../nodes/node-driver";
import type { ClusterState, StateGuard } from "./cluster-state";
import { failover, type FailoverRequest } from "./failover";
import { OperationContext, type FailoverOperationsDeps } from "./operation-context";
import type { RunningOperation } from "./operation-journal";
import { rejoin, type RejoinMethod, type RejoinRequest } from "./rejoin";
import { reseed, type ReseedRequest } from "./reseed";
import { resumeOperation } from "./resume";
import { switchover, type SwitchoverRequest } from "./switchover";

export type { FailoverOperationsDeps, OperationsConfig } from "./operation-context";
export type { FailoverRequest } from "./failover";
export type { RejoinMethod } from "./rejoin";

/**
 * Failover, switchover, failback, rejoin and replica changes: each journaled
 * (one at a time across instances, resumable by another), each step
 * idempotent, every stage an event. PostgreSQL says who is writable; the
 * cluster state says who may be. Each operation lives in a file of its own;
 * this is their one entrance.
 */
export class FailoverOperations {
  private readonly context: OperationContext;

  constructor(deps: FailoverOperationsDeps) {
    this.context = new OperationContext(deps);
  }

  /** An operation runs in this instance. */
  get busy(): boolean {
    return this.context.busy;
  }

  node(name: string): NodeRef {
    return this.context.node(name);
  }

  /** The recorded state; made from the observed primary when none is recorded yet. */
  state(): Promise<ClusterState> {
    return this.context.state();
  }

  failover(request: FailoverRequest): Promise<FailoverRecord> {
    return failover(this.context, request);
  }

  switchover(request: SwitchoverRequest): Promise<FailoverRecord> {
    return switchover(this.context, request);
  }

  /** A switchover back to the preferred primary. */
  failback(options: { trigger?: "automatic" | "manual"; lease?: StateGuard | null } = {}): Promise<FailoverRecord> {
    return switchover(this.context, { ...options, to: this.context.deps.config.preferredPrimary, kind: "failback" });
  }

  rejoin(name: string, request: RejoinRequest = {}): Promise<RejoinMethod> {
    return rejoin(this.context, name, request);
  }

  /** Seeds a replica again that cannot stream as it is (its slot lost). */
  reseed(name: string, request: ReseedRequest): Promise<void> {
    return reseed(this.context, name, request);
  }

  addReplica(name: string): Promise<NodeRef> {
    return addReplica(this.context, name);
  }

  removeReplica(name: string): Promise<void> {
    return removeReplica(this.context, name);
  }

  /** Runs an operation adopted from a dead instance's journal to its end. */
  resume(operation: RunningOperation): Promise<void> {
    return resumeOperation(this.context, operation);
  }

  /** Waits (at most `timeoutMs`) for the operations running here. */
  drain(timeoutMs: number): Promise<void> {
    return this.context.drain(timeoutMs);
  }
}
