import type Redis from "ioredis";
import type { EventLog, EventPublisher } from "../events/event-log";
import type { RedisKeys } from "../redis/keys";
import type { Logger } from "../log";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import type { Credentials } from "../postgres/connection";
import { NodeProber } from "./node-probe";
import {
  buildSnapshot,
  membersBeingRemade,
  operationHealthReasons,
  type ClusterSnapshot,
  type OperationSeen,
  type RecordedRemade,
} from "./topology";
import { observeNode } from "./topology-observe";
import { isTopologyChange, topologyChanges } from "./topology-changes";

export interface TopologyCollectorDeps {
  readonly clusterName: string;
  readonly nodes: readonly NodeRef[];
  readonly driver: NodeDriver;
  readonly credentials: Credentials;
  readonly redis: Redis;
  readonly keys: RedisKeys;
  readonly publisher: EventPublisher;
  readonly events: EventLog;
  readonly logger: Logger;
  readonly pollIntervalMs: number;
  readonly nodeTimeoutMs: number;
  readonly lagAlertBytes: number;
  /** Reasons, seen by the service rather than on a node, why the cluster is not healthy (see buildSnapshot). */
  readonly serviceReasons?: () => readonly string[] | Promise<readonly string[]>;
  /** Told about every new primary (or its loss), e.g. to rebuild database pools. */
  readonly onPrimary?: (primary: NodeRef | null) => Promise<void> | void;
}

/**
 * Polls every node each interval, keeps the latest snapshot in Redis (and in
 * memory, so a Redis outage does not blind the change detection), publishes
 * it to subscribers when it changed and records what changed as events.
 */
export class TopologyCollector {
  private readonly probers: Map<string, NodeProber>;
  private latestSnapshot: ClusterSnapshot | null = null;
  private timer: NodeJS.Timeout | null = null;
  private inFlight: Promise<ClusterSnapshot> | null = null;
  private stopped = true;

  constructor(private readonly deps: TopologyCollectorDeps) {
    this.probers = new Map();
  }

  get latest(): ClusterSnapshot | null {
    return this.latestSnapshot;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    const tick = async (): Promise<void> => {
      await this.pollNow().catch((error) => this.deps.logger.error({ err: (error as Error).message }, "topology poll failed"));
      if (!this.stopped) this.timer = setTimeout(() => void tick(), this.deps.pollIntervalMs);
    };
    void tick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.inFlight?.catch(() => undefined);
    await Promise.all([...this.probers.values()].map((prober) => prober.close()));
  }

  /** One poll round now; concurrent callers share the round in flight. */
  pollNow(): Promise<ClusterSnapshot> {
    if (!this.inFlight) {
      this.inFlight = this.poll().finally(() => {
        this.inFlight = null;
      });
    }
    return this.inFlight;
  }

  /** One prober per node, made on first sight: replicas are added while the service runs; a removed one's is closed. */
  private proberFor(node: NodeRef): NodeProber {
    let prober = this.probers.get(node.name);
    if (!prober) {
      prober = new NodeProber(node, this.deps.credentials, this.deps.nodeTimeoutMs);
      this.probers.set(node.name, prober);
    }
    return prober;
  }

  private closeRemovedProbers(): void {
    for (const [name, prober] of this.probers) {
      if (this.deps.nodes.some((node) => node.name === name)) continue;
      this.probers.delete(name);
      void prober.close();
    }
  }

  /**
   * What the failover side records that the snapshot shows: its reason for
   * holding a failover back, if it holds one (any instance may run the
   * monitor), and the members being re-made, by an operation in flight or
   * recorded as destroyed and not seeded yet (see membersBeingRemade), with
   * their health reasons.
   */
  private async recordedFacts(): Promise<{ reasons: string[]; reseeding: string[] }> {
    try {
      const { failoverHeldBack, operation, clusterState } = this.deps.keys;
      const [raw, entry, state] = await this.deps.redis.mget(failoverHeldBack, operation.entry, clusterState);
      const reason = raw == null ? undefined : (JSON.parse(raw) as { reason?: string }).reason;
      const inFlight = entry == null ? null : (JSON.parse(entry) as OperationSeen);
      const recorded = state == null ? {} : (JSON.parse(state) as RecordedRemade);
      return {
        reasons: [...(reason ? [`failover held back: ${reason}`] : []), ...operationHealthReasons(inFlight, recorded)],
        reseeding: membersBeingRemade(inFlight, recorded),
      };
    } catch {
      return { reasons: [], reseeding: [] }; // Redis away: the snapshot is built from the nodes alone
    }
  }

  private async poll(): Promise<ClusterSnapshot> {
    this.closeRemovedProbers();
    const previous = this.latestSnapshot;
    const [observed, recorded] = await Promise.all([
      Promise.all(this.deps.nodes.map((node) => observeNode(node, this.proberFor(node), this.deps.driver, previous))),
      this.recordedFacts(),
    ]);
    const observations = observed.map((o) => ({ ...o, reseeding: recorded.reseeding.includes(o.name) }));
    const next = buildSnapshot(this.deps.clusterName, observations, this.deps.lagAlertBytes, new Date().toISOString(), [
      ...((await this.deps.serviceReasons?.()) ?? []),
      ...recorded.reasons,
    ]);
    this.latestSnapshot = next;
    const changes = topologyChanges(previous, next, this.deps.lagAlertBytes);
    if (previous?.primary !== next.primary || previous === null) {
      await this.deps.onPrimary?.(this.deps.nodes.find((node) => node.name === next.primary) ?? null);
    }
    try {
      await this.deps.redis.set(this.deps.keys.topology, JSON.stringify(next));
      if (isTopologyChange(previous, next, changes)) this.deps.publisher.publish(this.deps.keys.topologyChannel, next);
    } catch (error) {
      this.deps.logger.warn({ err: (error as Error).message }, "topology snapshot not stored: Redis unavailable");
    }
    for (const change of changes) await this.deps.events.emit(change);
    return next;
  }
}
