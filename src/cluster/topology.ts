import { bytesBehind } from "../postgres/lsn";
import { nodeClusterName } from "../postgres/managed-settings";
import type { DriverKind, NodeProcessState, ContainerView } from "../nodes/node-driver";

/**
 * The cluster as last observed. PostgreSQL is the authority on roles; this
 * snapshot is a cache, refreshed by the collector and kept in Redis.
 */
export type { NodeRole, NodeState, SlotStatus } from "../postgres/node-state";
import type { NodeRole, NodeState, SlotStatus } from "../postgres/node-state";
import type { ReplayPauseState } from "../postgres/replay-pause";

export type ReplicationState = "streaming" | "catchup" | "startup" | "backup" | "stopping" | "stopped" | "unknown";

export interface ReplicationStatus {
  readonly state: ReplicationState;
  readonly upstream: string | null;
  readonly slotName: string | null;
  readonly lagBytes: number | null;
  readonly writeLagSeconds: number | null;
  readonly flushLagSeconds: number | null;
  readonly replayLagSeconds: number | null;
  readonly syncState: string | null;
  readonly lastMessageAt: string | null;
  /** The replica's own replay pause state; null when it did not answer. */
  readonly replayPause: ReplayPauseState | null;
}

export interface DriverView {
  readonly kind: DriverKind;
  /** "unknown" when the driver could not tell (see `error`). */
  readonly state: NodeProcessState["phase"] | "unknown";
  readonly pid: number | null;
  readonly dataDirectory: string;
  readonly containerId: string | null;
  /** The node's container as the engine sees it (docker driver); null otherwise or when it is gone. */
  readonly container: ContainerView | null;
  /** Why the driver could not tell (e.g. the Docker engine does not answer); the state is then "unknown". */
  readonly error: string | null;
}

export interface NodeSnapshot {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  readonly reachable: boolean;
  readonly error: string | null;
  readonly role: NodeRole;
  /** False when the role was not read from PostgreSQL in this round (node unreachable). */
  readonly roleConfirmed: boolean;
  readonly version: string | null;
  readonly timeline: number | null;
  readonly currentLsn: string | null;
  readonly receivedLsn: string | null;
  readonly replayedLsn: string | null;
  readonly replication: ReplicationStatus | null;
  readonly slots: readonly SlotStatus[];
  readonly driver: DriverView;
  readonly checkedAt: string;
  /**
   * Being re-made: a reseed in flight, or destroyed to be seeded again and
   * not seeded yet (the recorded state's `reseeding`, see membersBeingRemade).
   */
  readonly reseeding: boolean;
}

export type ClusterHealth = "healthy" | "degraded" | "critical";

export interface ClusterSnapshot {
  readonly name: string;
  readonly primary: string | null;
  readonly health: ClusterHealth;
  readonly healthReasons: readonly string[];
  readonly nodes: readonly NodeSnapshot[];
  readonly collectedAt: string;
}

export interface NodeObservation {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  readonly probe: NodeState | { readonly error: string };
  readonly driver: DriverView;
  /** Role to assume when the node cannot be asked (last snapshot, or its standby.signal). */
  readonly fallbackRole: NodeRole;
  readonly checkedAt: string;
  /** Being re-made (see NodeSnapshot.reseeding); false when not said. */
  readonly reseeding?: boolean;
}

/**
 * Turns one round of observations into a snapshot. `serviceReasons`: what
 * else keeps the cluster from being healthy, seen by the service rather
 * than on a node (the WAL archive refusing the primary's WAL, a failover
 * the monitor holds back because the members contradict the recorded
 * state). Pure.
 */
export function buildSnapshot(
  clusterName: string,
  observed: readonly NodeObservation[],
  lagAlertBytes: number,
  now: string,
  serviceReasons: readonly string[] = [],
): ClusterSnapshot {
  const observations = observed.map((o) => identityChecked(clusterName, o));
  const primaries = observations.filter((o) => "role" in o.probe && o.probe.role === "primary");
  const primaryProbe = primaries.length === 1 && "role" in primaries[0]!.probe ? primaries[0]!.probe : null;
  const nodes = observations.map((o) => nodeSnapshot(o, primaries[0]?.name ?? null, primaryProbe));
  const reasons: string[] = [];
  if (primaries.length === 0) reasons.push("no reachable primary");
  if (primaries.length > 1) reasons.push(`more than one primary: ${primaries.map((p) => p.name).join(", ")}`);
  for (const node of nodes) {
    if (!node.reachable) reasons.push(`${node.name} is unreachable`);
    else if (node.role === "replica" && node.replication?.state !== "streaming") reasons.push(`${node.name} is not streaming`);
    else if (node.role === "replica" && (node.replication?.lagBytes ?? 0) > lagAlertBytes)
      reasons.push(`${node.name} lags ${node.replication?.lagBytes} bytes`);
  }
  // A lost slot reserves nothing: its holder (a replica, the archiver) cannot stream from where it was until repaired.
  for (const slot of primaryProbe?.slots ?? []) {
    if (slot.walStatus === "lost") reasons.push(`slot ${slot.name} on ${primaries[0]!.name} was invalidated (max_slot_wal_keep_size)`);
  }
  reasons.push(...serviceReasons);
  const health: ClusterHealth = primaries.length !== 1 ? "critical" : reasons.length > 0 ? "degraded" : "healthy";
  return {
    name: clusterName,
    primary: primaries.length === 1 ? primaries[0]!.name : null,
    health,
    healthReasons: reasons,
    nodes,
    collectedAt: now,
  };
}

/** The operation in flight, as the journal's entry read from Redis says it. */
export type OperationSeen = { readonly kind?: string; readonly from?: string; readonly reason?: string } | null;

/** What the recorded cluster state says of the members being re-made (its JSON as read from Redis; fields absent in older records). */
export interface RecordedRemade {
  readonly primary?: string;
  readonly reseeding?: readonly string[];
}

/**
 * The members being re-made: the one a reseed in flight seeds again, and
 * those the recorded state lists as destroyed to be seeded again and not
 * seeded yet (`reseeding`: a reseed, or a rejoin whose pg_rewind failed,
 * that failed past the destroy; the failover monitor seeds them again).
 * Never the recorded primary: a record left stale by a member made again
 * another way, and promoted since, must not call the primary destroyed.
 * Sorted. Pure.
 */
export function membersBeingRemade(entry: OperationSeen, recorded: RecordedRemade): string[] {
  const names = new Set(recorded.reseeding ?? []);
  if (entry?.kind === "reseed" && entry.from) names.add(entry.from);
  if (recorded.primary !== undefined) names.delete(recorded.primary);
  return [...names].sort();
}

/**
 * The health reasons of members being re-made (see membersBeingRemade): a
 * reseed in flight with its reason, and each other member recorded as
 * destroyed and not seeded yet. Never the recorded primary. Pure.
 */
export function operationHealthReasons(entry: OperationSeen, recorded: RecordedRemade = {}): string[] {
  const remade = membersBeingRemade(entry, recorded);
  const inFlight = entry?.kind === "reseed" && entry.from !== undefined && remade.includes(entry.from) ? entry.from : undefined;
  return [
    ...(inFlight === undefined ? [] : [`${inFlight} is being seeded again: ${entry!.reason}`]),
    ...remade
      .filter((name) => name !== inFlight)
      .map((name) => `${name} was destroyed to be seeded again and is not seeded yet: the failover monitor seeds it again`),
  ];
}

/**
 * What answered on a member's port is that member only if it says so
 * (cluster_name): a restored copy, or any other server, on a stopped
 * member's port is not the member. It is reported as the member being
 * unreachable, never as a primary or a replica of the cluster.
 */
function identityChecked(clusterName: string, o: NodeObservation): NodeObservation {
  if (!("role" in o.probe)) return o;
  const expected = nodeClusterName(clusterName, o.name);
  if (o.probe.clusterName === expected) return o;
  return {
    ...o,
    probe: {
      error:
        `port ${o.port} is answered by another server (cluster_name "${o.probe.clusterName}", not "${expected}"), ` +
        `e.g. a restored copy: ${o.name} is not running there`,
    },
  };
}

function nodeSnapshot(o: NodeObservation, primaryName: string | null, primaryProbe: NodeState | null): NodeSnapshot {
  const base = { name: o.name, host: o.host, port: o.port, driver: o.driver, checkedAt: o.checkedAt, reseeding: o.reseeding ?? false };
  if (!("role" in o.probe)) {
    return {
      ...base,
      reachable: false,
      error: o.probe.error,
      role: o.fallbackRole,
      roleConfirmed: false,
      version: null,
      timeline: null,
      currentLsn: null,
      receivedLsn: null,
      replayedLsn: null,
      replication: o.fallbackRole === "replica" ? { ...EMPTY_REPLICATION, state: "unknown" } : null,
      slots: [],
    };
  }
  const probe = o.probe;
  return {
    ...base,
    reachable: true,
    error: null,
    role: probe.role,
    roleConfirmed: true,
    version: probe.version,
    timeline: probe.timeline,
    currentLsn: probe.currentLsn,
    receivedLsn: probe.receivedLsn,
    replayedLsn: probe.replayedLsn,
    replication: probe.role === "replica" ? replicationOf(o.name, probe, primaryName, primaryProbe) : null,
    slots: probe.slots,
  };
}

const EMPTY_REPLICATION: ReplicationStatus = {
  state: "stopped",
  upstream: null,
  slotName: null,
  lagBytes: null,
  writeLagSeconds: null,
  flushLagSeconds: null,
  replayLagSeconds: null,
  syncState: null,
  lastMessageAt: null,
  replayPause: null,
};

/**
 * A replica's replication as both ends see it: the primary's
 * pg_stat_replication row (byte lag and write/flush/replay lag times) when
 * it has one for this node, the replica's own WAL receiver otherwise.
 */
function replicationOf(name: string, probe: NodeState, primaryName: string | null, primaryProbe: NodeState | null): ReplicationStatus {
  const sender = primaryProbe?.senders.find((s) => s.applicationName === name) ?? null;
  const receiverStatus = probe.receiver?.status ?? null;
  const state: ReplicationState = sender
    ? normaliseState(sender.state)
    : receiverStatus === "streaming"
      ? "streaming"
      : receiverStatus === null
        ? "stopped"
        : normaliseState(receiverStatus);
  return {
    state,
    upstream: probe.receiver ? primaryName : null,
    slotName: probe.receiver?.slotName ?? null,
    lagBytes: sender?.lagBytes ?? localLagBytes(probe),
    writeLagSeconds: sender?.writeLagSeconds ?? null,
    flushLagSeconds: sender?.flushLagSeconds ?? null,
    replayLagSeconds: sender?.replayLagSeconds ?? probe.replayLagSeconds,
    syncState: sender?.syncState ?? null,
    lastMessageAt: probe.receiver?.lastMessageAt ?? null,
    replayPause: probe.replayPause,
  };
}

function normaliseState(state: string): ReplicationState {
  const known: ReplicationState[] = ["streaming", "catchup", "startup", "backup", "stopping", "stopped"];
  return (known as string[]).includes(state) ? (state as ReplicationState) : "unknown";
}

/** Received but not yet replayed, when the primary cannot be asked. */
function localLagBytes(probe: NodeState): number | null {
  if (probe.receivedLsn === null || probe.replayedLsn === null) return null;
  return bytesBehind(probe.receivedLsn, probe.replayedLsn);
}
