import type { Client } from "pg";
import { NodeClient } from "../postgres/node-client";
import type { NodeRef } from "../nodes/node-driver";
import { clientConfig, type Credentials } from "../postgres/connection";
import { readNodeState, type NodeState } from "../postgres/node-state";

/**
 * One node's PostgreSQL view, over a connection kept open between polls (a
 * SCRAM handshake every second per node would be waste). Any error drops the
 * connection; the next probe reconnects.
 */
export class NodeProber {
  private client: Client | null = null;

  constructor(
    private readonly node: NodeRef,
    private readonly credentials: Credentials,
    private readonly timeoutMs: number,
  ) {}

  async probe(): Promise<NodeState> {
    try {
      const client = await this.connection();
      return await readNodeState(client);
    } catch (error) {
      await this.close();
      throw error;
    }
  }

  async close(): Promise<void> {
    const client = this.client;
    this.client = null;
    await client?.end().catch(() => undefined);
  }

  private async connection(): Promise<Client> {
    if (this.client) return this.client;
    const client = new NodeClient(clientConfig(this.node, this.credentials, this.timeoutMs));
    client.on("error", () => {
      if (this.client === client) this.client = null;
    });
    await client.connect();
    this.client = client;
    return client;
  }
}
