import { lsnBytes } from "./lsn";
import { withNodeClient, type Credentials } from "./connection";
import { readNodeState, type NodeState } from "./node-state";
import { readReachedTimeline, serverHistory, type TimelineStep } from "./timelines";
import { nodeClusterName } from "./managed-settings";
import type { NodeRef } from "../nodes/node-driver";

/** What an operation needs to know of one node, read from PostgreSQL now. */
export interface NodeFacts {
  readonly node: NodeRef;
  readonly inRecovery: boolean;
  readonly readOnly: boolean;
  /** Primary: its current LSN; replica: the last LSN received (else replayed). */
  readonly lsn: string | null;
  /**
   * Primary: the timeline it writes; replica: the one it receives (else its
   * last restartpoint's here, a lower bound; readNodePosition derives the
   * one reached, see reachedTimeline).
   */
  readonly timeline: number | null;
  /** Replica: the WAL receiver's status, the server it streams from, and how long that server has been silent. */
  readonly receiver: {
    readonly status: string;
    readonly senderHost: string | null;
    readonly senderPort: number | null;
    readonly silentMs: number | null;
  } | null;
}

/** A node's facts and the history of its timeline: where it stands among the cluster's branches. */
export interface NodePosition extends NodeFacts {
  /** Its timeline's ancestry, oldest first (null: the history file could not be read). */
  readonly history: readonly TimelineStep[] | null;
}

/** The facts an operation decides on, out of the node's state (the same read the topology polls). */
export function factsOf(node: NodeRef, state: NodeState): NodeFacts {
  const inRecovery = state.role === "replica";
  return {
    node,
    inRecovery,
    readOnly: state.readOnly,
    lsn: inRecovery ? (state.receivedLsn ?? state.replayedLsn) : state.currentLsn,
    timeline: state.timeline,
    receiver:
      state.receiver === null
        ? null
        : {
            status: state.receiver.status,
            senderHost: state.receiver.senderHost,
            senderPort: state.receiver.senderPort,
            silentMs: state.receiver.silentMs,
          },
  };
}

/**
 * The node's facts; null when it does not answer within `timeoutMs`, or
 * when what answers on its port is not it: its cluster_name is not
 * `<clusterName>-<node>` (a restored copy, another cluster's server on a
 * stopped member's port is no member, and no word of it counts).
 */
export async function readNodeFacts(
  node: NodeRef,
  credentials: Credentials,
  timeoutMs: number,
  clusterName: string,
): Promise<NodeFacts | null> {
  try {
    return await withNodeClient(node, credentials, timeoutMs, async (client) => {
      const state = await readNodeState(client);
      return isMember(state, clusterName, node) ? factsOf(node, state) : null;
    });
  } catch {
    return null;
  }
}

function isMember(state: NodeState, clusterName: string, node: NodeRef): boolean {
  return state.clusterName === nodeClusterName(clusterName, node.name);
}

/**
 * The node's facts and its timeline's history (a second read, of the
 * history file, only past timeline 1); null when it does not answer, or is
 * not the member (see readNodeFacts).
 */
export async function readNodePosition(
  node: NodeRef,
  credentials: Credentials,
  timeoutMs: number,
  clusterName: string,
): Promise<NodePosition | null> {
  try {
    return await withNodeClient(node, credentials, timeoutMs, async (client) => {
      const state = await readNodeState(client);
      if (!isMember(state, clusterName, node)) return null;
      const facts = factsOf(node, state);
      if (facts.timeline === null) return { ...facts, history: null };
      // A standby's restartpoint timeline lags a switch it has followed: compared as it is, it would call a newer promotion a branch.
      const reached =
        state.timelineFromRestartpoint === true
          ? await readReachedTimeline(client, { restartpointTimeline: facts.timeline, lsn: facts.lsn }).catch(() => null)
          : null;
      const timeline = reached?.timeline ?? facts.timeline;
      const history = reached?.history ?? (await serverHistory(client, timeline).catch(() => null));
      return { ...facts, timeline, history };
    });
  } catch {
    return null;
  }
}

type Receiver = NonNullable<NodeFacts["receiver"]>;

/** A WAL receiver streaming and heard from within `windowMs`: its sender is alive (a silent one's may be frozen). */
export function hearsLiveSender(receiver: NodeFacts["receiver"], windowMs: number): receiver is Receiver {
  return receiver?.status === "streaming" && (receiver.silentMs === null || receiver.silentMs <= windowMs);
}

/** A standby whose WAL receiver streams from `primary`. */
export function streamsFrom(facts: NodeFacts | null, primary: NodeRef): boolean {
  return facts !== null && facts.inRecovery && facts.receiver?.status === "streaming" && isSender(facts.receiver, primary);
}

const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1"]);

/** Whether a WAL receiver's sender is `node` (its port, and its host unless both are this host's loopback). */
export function isSender(receiver: { readonly senderHost: string | null; readonly senderPort: number | null }, node: NodeRef): boolean {
  if (receiver.senderPort !== node.port) return false;
  const host = receiver.senderHost;
  return host === null || host === node.host || (LOOPBACK.has(host) && LOOPBACK.has(node.host)) || host.startsWith("/");
}

/** Most advanced first (received LSN), then `preferred`, then by name: a stable choice between equals. */
export function byMostAdvanced(preferred: string): (a: NodeFacts, b: NodeFacts) => number {
  return (a, b) => {
    const difference = (lsnBytes(b.lsn) ?? -1) - (lsnBytes(a.lsn) ?? -1);
    if (difference !== 0) return difference;
    if (a.node.name === preferred) return -1;
    if (b.node.name === preferred) return 1;
    return a.node.name.localeCompare(b.node.name);
  };
}
