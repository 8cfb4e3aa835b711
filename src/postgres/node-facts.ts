import { lsnBytes } from "./lsn";
import { withNodeClient, type Credentials } from "./connection";
import { CURRENT_TIMELINE_SQL } from "../cluster/node-probe";

import type { NodeRef } from "../nodes/node-driver";

/** What an operation needs to know of one node, read from PostgreSQL now. */
export interface NodeFacts {
  readonly node: NodeRef;
  readonly inRecovery: boolean;
  readonly readOnly: boolean;
  /** Primary: its current LSN; replica: the last LSN received (else replayed). */
  readonly lsn: string | null;
  readonly timeline: number | null;
  /** Replica: the WAL receiver's status and the port it streams from. */
  readonly receiver: { readonly status: string; readonly senderPort: number | null } | null;
}

const FACTS_SQL = `
SELECT pg_is_in_recovery() AS in_recovery,
       current_setting('transaction_read_only') = 'on' AS read_only,
       CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text
            ELSE pg_current_wal_lsn()::text END AS lsn,
       CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint())
            ELSE ${CURRENT_TIMELINE_SQL} END AS timeline,
       (SELECT status FROM pg_stat_wal_receiver) AS receiver_status,
       (SELECT sender_port FROM pg_stat_wal_receiver) AS sender_port`;

/** The node's facts; null when it does not answer within `timeoutMs`. */
export async function readNodeFacts(node: NodeRef, credentials: Credentials, timeoutMs: number): Promise<NodeFacts | null> {
  try {
    return await withNodeClient(node, credentials, timeoutMs, async (client) => {
      const row = (await client.query(FACTS_SQL)).rows[0] as {
        in_recovery: boolean;
        read_only: boolean;
        lsn: string | null;
        timeline: number | null;
        receiver_status: string | null;
        sender_port: number | null;
      };
      return {
        node,
        inRecovery: row.in_recovery,
        readOnly: row.read_only,
        lsn: row.lsn,
        timeline: row.timeline,
        receiver: row.receiver_status === null ? null : { status: row.receiver_status, senderPort: row.sender_port },
      };
    });
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
