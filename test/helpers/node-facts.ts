import type { NodeFacts, NodePosition } from "../../src/postgres/node-facts";
import type { TimelineStep } from "../../src/postgres/timelines";

/** A replica's facts as failover reads them: in recovery, read-only, at `lsn`. */
export function replicaFacts(name: string, lsn: string | null): NodeFacts {
  return { node: { name, host: "127.0.0.1", port: 1 }, inRecovery: true, readOnly: true, lsn, timeline: 1, receiver: null };
}

/** Node `name` of a test cluster listens on 5000 + its number (node2: 5002). */
export function testNode(name: string): { name: string; host: string; port: number } {
  return { name, host: "127.0.0.1", port: 5000 + Number(name.replace(/\D/g, "")) };
}

/**
 * Where a member stands: a replica streaming from `streamsFrom` (silent for
 * `silentMs`) or not streaming (null), or a primary (`primary: true`), on
 * the last timeline of `history` (default: timeline 1).
 */
export function position(
  name: string,
  options: { primary?: boolean; streamsFrom?: string | null; silentMs?: number; history?: TimelineStep[]; lsn?: string } = {},
): NodePosition {
  const history = options.history ?? [{ timeline: 1, switchLsn: null }];
  const sender = options.streamsFrom ? testNode(options.streamsFrom) : null;
  return {
    node: testNode(name),
    inRecovery: !options.primary,
    readOnly: !options.primary,
    lsn: options.lsn ?? "0/5000000",
    timeline: history[history.length - 1]!.timeline,
    history,
    receiver:
      options.primary || options.streamsFrom === undefined
        ? null
        : {
            status: sender ? "streaming" : "waiting",
            senderHost: sender?.host ?? null,
            senderPort: sender?.port ?? null,
            silentMs: options.silentMs ?? 100,
          },
  };
}

/** The local driver's view of a node that runs: what topology snapshots are built from in unit tests. */
export const runningLocalDriver = {
  kind: "local" as const,
  state: "running" as const,
  pid: 1,
  dataDirectory: "/d",
  containerId: null,
  container: null,
  error: null,
};
