import type { NodeRef } from "../../src/nodes/node-driver";
import { eventually, type TestCluster } from "./service";
import { sqlOn } from "./sql";

/** What the failover runbooks ask of one test cluster. */
export function failoverHelpers(cluster: TestCluster) {
  const node = (name: string): NodeRef => cluster.service.nodes.find((n) => n.name === name)!;
  const sql = <T = Record<string, unknown>>(target: NodeRef, text: string) => sqlOn<T>(target, cluster.service.secrets, text);
  const state = async () => (await cluster.service.failover.state())!;
  const events = async (kind: string, since: number) =>
    (await cluster.service.events.page({ first: 500 })).events.filter((e) => e.kind === kind && Date.parse(e.occurredAt) >= since);
  /** The recorded primary once no operation is in flight. */
  const primaryNow = async (): Promise<string> =>
    eventually(async () => {
      const current = await state();
      return (await cluster.service.failover.operation()) === null ? current.primary : undefined;
    });
  /** The port a standby's WAL receiver streams from (null when it does not stream). */
  const streamingFrom = async (target: NodeRef): Promise<number | null> =>
    (
      await sql<{ port: number | null }>(target, "SELECT (SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming') AS port")
    )[0]!.port;
  return { node, sql, state, events, primaryNow, streamingFrom };
}
