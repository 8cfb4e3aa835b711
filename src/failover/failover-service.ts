import type Redis from "ioredis";
import type { EventLog, EventStreamReads } from "../events/event-log";
import type { EventKind, FailoverRecord } from "../events/event-map";
import type { PrimaryDatabase } from "../db/primary-database";
import type { Logger } from "../log";
import type { NodeRef } from "../nodes/node-driver";
import { LeaderRole, type RedisLease } from "../redis/redis-lease";
import type { Actor } from "../events/event-map";
import type { ClusterState, ClusterStateStore } from "./cluster-state";
import type { ClusterSnapshot } from "../cluster/topology";
import { FailoverMonitor, type FailoverMonitorDeps } from "./monitor";
import type { JournalEntry, OperationJournal } from "./operation-journal";
import type { FailoverOperations, RejoinMethod } from "./operations";
import type { RedisKeys } from "../redis/keys";

export interface FailoverServiceDeps {
  readonly redis: Redis;
  readonly keys: Pick<RedisKeys, "maintenance" | "primaryLsn" | "failoverHeldBack" | "leases">;
  readonly nodes: readonly NodeRef[];
  readonly store: ClusterStateStore;
  readonly journal: OperationJournal;
  readonly operations: FailoverOperations;
  readonly events: EventLog;
  readonly logger: Logger;
  readonly lease: RedisLease;
  readonly leaseTtlMs: number;
  /** The consolidated Failover records; recent ones are also read from the events stream (not consolidated yet while no primary is up). */
  readonly database: PrimaryDatabase;
  readonly monitor: Omit<
    FailoverMonitorDeps,
    | "guard"
    | "store"
    | "journal"
    | "operations"
    | "redis"
    | "maintenanceKey"
    | "primaryLsnKey"
    | "heldBackKey"
    | "events"
    | "logger"
    | "nodes"
  >;
}

/** What the API and the CLI see of failover: the operations, maintenance mode, the recorded state. */
export class FailoverService {
  readonly monitor: FailoverMonitor;
  private readonly role: LeaderRole;
  private readonly maintenanceKey: string;

  constructor(private readonly deps: FailoverServiceDeps) {
    this.maintenanceKey = deps.keys.maintenance;
    this.monitor = new FailoverMonitor({
      ...deps.monitor,
      nodes: deps.nodes,
      redis: deps.redis,
      maintenanceKey: this.maintenanceKey,
      primaryLsnKey: deps.keys.primaryLsn,
      heldBackKey: deps.keys.failoverHeldBack,
      store: deps.store,
      journal: deps.journal,
      operations: deps.operations,
      events: deps.events,
      logger: deps.logger,
      guard: () => {
        const held = deps.lease.current;
        return held ? { key: deps.keys.leases.failoverMonitor, value: held.holder } : null;
      },
    });
    // The monitor runs in one instance at a time; a standby instance takes over when the lease expires.
    this.role = new LeaderRole(
      deps.lease,
      { name: "failover-monitor", start: () => this.monitor.start(), stop: () => this.monitor.stop() },
      deps.leaseTtlMs,
      deps.logger,
    );
  }

  /**
   * Makes the recorded state agree with a cluster that changed while no
   * service watched it, before the monitor acts on it: a cluster initialised
   * anew forgets the old state; a cluster rebuilt from the repository
   * (`relevo restore --cluster`) has its primary where the record says there
   * is a replica, and that primary, which carries no fence, is recorded. A
   * fenced node is never adopted this way.
   */
  async reconcile(options: { snapshot: ClusterSnapshot | null; initialised: boolean }): Promise<void> {
    const { snapshot, initialised } = options;
    if (initialised) {
      await this.deps.store.clear();
      await this.deps.journal.clear();
      await this.deps.redis.del(this.deps.keys.primaryLsn);
      return;
    }
    const state = await this.deps.store.read();
    if (!state || !snapshot?.primary || snapshot.primary === state.primary || state.fenced.includes(snapshot.primary)) return;
    const recorded = snapshot.nodes.find((node) => node.name === state.primary);
    if (recorded && !(recorded.reachable && recorded.roleConfirmed && recorded.role === "replica")) return;
    const primary = snapshot.primary;
    await this.deps.store.update(null, (current) => ({
      ...(current ?? state),
      primary,
      epoch: (current ?? state).epoch + 1,
      syncSet: [],
      eligible: [],
      joining: {},
    }));
    this.deps.logger.warn(
      { recorded: state.primary, primary },
      "the recorded primary is a replica now and another node is the only writable one: recorded it as the primary",
    );
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

  /** Stops the monitor and waits (up to 30 s) for operations running here, before the service stops nodes under them. */
  async stop(): Promise<void> {
    await this.role.stop();
    await this.deps.operations.drain(30000);
  }

  failover(options: { to?: string | null; force?: boolean }): Promise<FailoverRecord> {
    return this.deps.operations.failover({
      to: options.to ?? null,
      force: options.force ?? false,
      trigger: "manual",
      reason: "requested by an operator",
    });
  }

  switchover(to: string): Promise<FailoverRecord> {
    return this.deps.operations.switchover({ to });
  }

  failback(): Promise<FailoverRecord> {
    return this.deps.operations.failback();
  }

  rejoin(name: string): Promise<RejoinMethod> {
    return this.deps.operations.rejoin(name);
  }

  addReplica(name: string): Promise<NodeRef> {
    return this.deps.operations.addReplica(name);
  }

  removeReplica(name: string): Promise<void> {
    return this.deps.operations.removeReplica(name);
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
      message: enabled
        ? "maintenance mode on: no automatic failover, rejoin or failback"
        : "maintenance mode off: automatic decisions resume",
      data: { enabled },
      actor,
    });
    return enabled;
  }

  /**
   * Finished changes of primary, newest first: the catalog's Failover rows
   * merged with the finishing events still in Redis (one that happened while
   * the database was unreachable is not consolidated yet).
   */
  /** `reads`: the stream batches an API request shares between its event reads (see EventStreamReads). */
  async failovers(limit: number, reads?: EventStreamReads): Promise<FailoverRecord[]> {
    const byId = new Map<string, FailoverRecord>();
    const page = await this.deps.events.page({ first: limit, kinds: FINISHED_KINDS }, reads);
    for (const event of page.events) byId.set((event.data as FailoverRecord).id, event.data as FailoverRecord);
    try {
      const prisma = await this.deps.database.client();
      const rows = await prisma.failover.findMany({ where: { status: { not: "running" } }, orderBy: { startedAt: "desc" }, take: limit });
      for (const row of rows) {
        if (byId.has(row.id)) continue;
        byId.set(row.id, {
          id: row.id,
          kind: row.kind as FailoverRecord["kind"],
          trigger: row.trigger as FailoverRecord["trigger"],
          from: row.fromNode,
          to: row.toNode,
          status: row.status as FailoverRecord["status"],
          reason: row.reason,
          error: row.error,
          lostBytes: row.lostBytes === null ? null : Number(row.lostBytes),
          startedAt: row.startedAt.toISOString(),
          fencedAt: row.fencedAt?.toISOString() ?? null,
          promotedAt: row.promotedAt?.toISOString() ?? null,
          finishedAt: row.finishedAt?.toISOString() ?? null,
          durationMs: row.durationMs,
        });
      }
    } catch (error) {
      this.deps.logger.warn(
        { err: (error as Error).message },
        "failover records read from the events stream only: the database is unavailable",
      );
    }
    return [...byId.values()].sort((a, b) => Date.parse(b.startedAt) - Date.parse(a.startedAt)).slice(0, limit);
  }

  state(): Promise<ClusterState | null> {
    return this.deps.store.read();
  }

  operation(): Promise<JournalEntry | null> {
    return this.deps.journal.current();
  }
}

/** The events that end a change of primary; each carries its FailoverRecord. */
const FINISHED_KINDS: readonly EventKind[] = ["failover:completed", "failover:failed"];
