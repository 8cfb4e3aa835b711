import { lsnBytes } from "./lsn";
import { withNodeClient, type Credentials } from "./connection";
import { readNodeState, type NodeState } from "./node-state";
import type { NodeRef } from "../nodes/node-driver";

/** What an operation needs to know of one node, read from PostgreSQL now. */
export interface NodeFacts {
  readonly node: NodeRef;
  readonly inRecovery: boolean;
  readonly readOnly: boolean;
  /** Primary: its current LSN; replica: the last LSN received (else replayed). */
  readonly lsn: string | null;
  /** Primary: the timeline it writes; replica: the one it receives (else its last checkpoint's). */
  readonly timeline: number | null;
  /** Replica: the WAL receiver's status and the port it streams from. */
  readonly receiver: { readonly status: string; readonly senderPort: number | null } | null;
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
    receiver: state.receiver === null ? null : { status: state.receiver.status, senderPort: state.receiver.senderPort },
  };
}

/** The node's facts; null when it does not answer within `timeoutMs`. */
export async function readNodeFacts(node: NodeRef, credentials: Credentials, timeoutMs: number): Promise<NodeFacts | null> {
  try {
    return await withNodeClient(node, credentials, timeoutMs, async (client) => factsOf(node, await readNodeState(client)));
  } catch {
    return null;
  }
}

/** A standby whose WAL receiver streams from `primary`. */
export function streamsFrom(facts: NodeFacts | null, primary: NodeRef): boolean {
  return facts !== null && facts.inRecovery && facts.receiver?.status === "streaming" && facts.receiver.senderPort === primary.port;
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
