import type { NodeFacts } from "../../src/postgres/node-facts";

/** A replica's facts as failover reads them: in recovery, read-only, at `lsn`. */
export function replicaFacts(name: string, lsn: string | null): NodeFacts {
  return { node: { name, host: "127.0.0.1", port: 1 }, inRecovery: true, readOnly: true, lsn, timeline: 1, receiver: null };
}
