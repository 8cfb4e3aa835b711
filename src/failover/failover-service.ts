import type Redis from "ioredis";
import type { EventLog } from "../events/event-log";
import type { FailoverRecord } from "../events/event-map";
import type { Logger } from "../log";
import type { NodeRef } from "../nodes/node-driver";
import { LeaderRole, type RedisLease } from "../redis/redis-lease";
import type { Actor } from "../events/event-map";
import type { ClusterState, ClusterStateStore } from "./cluster-state";
import { FailoverMonitor, type FailoverMonitorDeps } from "./monitor";
import type { JournalEntry, OperationJournal } from "./operation-journal";
import type { FailoverOperations, RejoinMethod } from "./operations";

export interface FailoverServiceDeps {
  readonly redis: Redis;
  readonly keyPrefix: string;
  readonly nodes: readonly NodeRef[];
  readonly store: ClusterStateStore;
  readonly journal: OperationJournal;
  readonly operations: FailoverOperations;
  readonly events: EventLog;
  readonly logger: Logger;
  readonly lease: RedisLease;
  readonly leaseTtlMs: number;
  readonly monitor: Omit<FailoverMonitorDeps, "guard" | "store" | "journal" | "operations" | "redis" | "maintenanceKey" | "events" | "logger" | "nodes">;
}

/** What the API and the CLI see of failover: the operations, maintenance mode, the recorded state. */
export class FailoverService {
  readonly monitor: FailoverMonitor;
  private readonly role: LeaderRole;
  private readonly maintenanceKey: string;

  constructor(private readonly deps: FailoverServiceDeps) {
    this.maintenanceKey = `${deps.keyPrefix}:maintenance`;
    this.monitor = new FailoverMonitor({
      ...deps.monitor,
      nodes: deps.nodes,
      redis: deps.redis,
      maintenanceKey: this.maintenanceKey,
      store: deps.store,
      journal: deps.journal,
      operations: deps.operations,
      events: deps.events,
      logger: deps.logger,
      guard: () => {
        const held = deps.lease.current;
        return held ? { key: leaseKeyOf(deps.keyPrefix), value: held.holder } : null;
      },
    });
    // The monitor runs in one instance at a time; a standby instance takes over when the lease expires.
    this.role = new LeaderRole(deps.lease, { name: "failover-monitor", start: () => this.monitor.start(), stop: () => this.monitor.stop() }, deps.leaseTtlMs, deps.logger);
  }

  get operations(): FailoverOperations {
    return this.deps.operations;
  }

  get leading(): boolean {
    return this.role.isLeading;
  }

  start(): void {
    this.role.start();
  }

  async stop(): Promise<void> {
    await this.role.stop();
  }

  failover(options: { to?: string | null; force?: boolean }): Promise<FailoverRecord> {
    return this.deps.operations.failover({ to: options.to ?? null, force: options.force ?? false, trigger: "manual", reason: "requested by an operator" });
  }

  switchover(to: string): Promise<FailoverRecord> {
    return this.deps.operations.switchover(to);
  }

  failback(): Promise<FailoverRecord> {
    return this.deps.operations.failback();
  }

  rejoin(name: string): Promise<RejoinMethod> {
    return this.deps.operations.rejoin(name);
  }

  async maintenance(): Promise<boolean> {
    return (await this.deps.redis.get(this.maintenanceKey)) === "1";
  }

  async setMaintenance(enabled: boolean, actor: Actor | null = null): Promise<boolean> {
    if (enabled) await this.deps.redis.set(this.maintenanceKey, "1");
    else await this.deps.redis.del(this.maintenanceKey);
    await this.deps.events.emit({
      kind: "cluster:maintenance",
      severity: "warning",
      node: null,
      message: enabled ? "maintenance mode on: no automatic failover, rejoin or failback" : "maintenance mode off: automatic decisions resume",
      data: { enabled },
      actor,
    });
    return enabled;
  }

  state(): Promise<ClusterState | null> {
    return this.deps.store.read();
  }

  operation(): Promise<JournalEntry | null> {
    return this.deps.journal.current();
  }
}

export function leaseKeyOf(prefix: string): string {
  return `${prefix}:lease:failover-monitor`;
}
