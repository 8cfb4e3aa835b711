import { Client } from "pg";
import type { NodeRef } from "../../src/nodes/node-driver";

/** A writer that inserts into `table` (note, pad) until stopped, like an application during a backup. */
export function startWriter(node: NodeRef, password: string, table = "ledger"): { stop(): Promise<number> } {
  let running = true;
  let written = 0;
  const done = (async () => {
    const client = new Client({ host: node.host, port: node.port, user: "postgres", password, database: "postgres" });
    await client.connect();
    try {
      while (running) {
        await client.query(`INSERT INTO ${table} (note, pad) VALUES ($1, repeat('x', 500))`, [`row ${written}`]);
        written += 1;
      }
    } finally {
      await client.end();
    }
  })();
  return {
    stop: async () => {
      running = false;
      await done;
      return written;
    },
  };
}
