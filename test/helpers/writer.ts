import { Client } from "pg";
import type { NodeRef } from "../../src/nodes/node-driver";
import { testClientSsl } from "./tls";

/**
 * A writer that inserts into `table` (note, pad) until stopped, like an
 * application during a backup. `slowestMs` is the longest an INSERT took in
 * the server, from receiving the statement to the row inserted (lock waits
 * included; not the commit's flush, nor this process's own event loop, which
 * the service under test shares).
 */
export function startWriter(node: NodeRef, password: string, table = "ledger"): { stop(): Promise<number>; readonly slowestMs: number } {
  let running = true;
  let written = 0;
  let slowestMs = 0;
  const done = (async () => {
    const client = new Client({ host: node.host, port: node.port, user: "postgres", password, database: "postgres", ssl: testClientSsl() });
    await client.connect();
    try {
      while (running) {
        // The simple query protocol (no parameters): statement_timestamp() is
        // when the one message arrived, before parsing takes the table's lock
        // (with parse, bind and execute messages each resets it).
        const inserted = await client.query<{ ms: number }>(
          `INSERT INTO ${table} (note, pad) VALUES ('row ${written}', repeat('x', 500))
           RETURNING extract(epoch FROM clock_timestamp() - statement_timestamp())::float8 * 1000 AS ms`,
        );
        slowestMs = Math.max(slowestMs, inserted.rows[0]!.ms);
        written += 1;
      }
    } finally {
      await client.end();
    }
  })();
  return {
    get slowestMs() {
      return slowestMs;
    },
    stop: async () => {
      running = false;
      await done;
      return written;
    },
  };
}

/**
 * A client as an application's pool behaves across a certificate rotation:
 * a new verify-full session to each of `nodes` in turn, one query, closed,
 * until stopped. Every failure is kept (a node serving a pair that does not
 * verify, a reload that refused a session): what an open session would never
 * see.
 */
export function startReconnecter(
  nodes: readonly NodeRef[],
  password: string,
): { stop(): Promise<{ sessions: number; failures: string[] }> } {
  let running = true;
  let sessions = 0;
  const failures: string[] = [];
  const done = (async () => {
    for (let turn = 0; running; turn += 1) {
      const node = nodes[turn % nodes.length]!;
      const client = new Client({
        host: node.host,
        port: node.port,
        user: "postgres",
        password,
        database: "postgres",
        ssl: testClientSsl(),
      });
      try {
        await client.connect();
        await client.query("SELECT 1");
        sessions += 1;
      } catch (error) {
        failures.push(`${node.name}: ${(error as Error).message}`);
      } finally {
        await client.end().catch(() => undefined);
      }
    }
  })();
  return {
    stop: async () => {
      running = false;
      await done;
      return { sessions, failures };
    },
  };
}
