import type { Client } from "pg";
import { NodeClient } from "../postgres/node-client";
import { clientConfig, type Credentials } from "../postgres/connection";
import { nodeClusterName } from "../postgres/managed-settings";
import type { NodeRef } from "../nodes/node-driver";

/** One standby as the primary sees it. */
export interface StandbySeen {
  readonly name: string;
  readonly state: string;
  readonly flushLsn: string | null;
  /** pg_stat_replication.sync_state: `quorum` or `sync` once the primary waits for it. */
  readonly syncState: string | null;
}

export type PrimaryCheck =
  | { readonly ok: true; readonly lsn: string; readonly synchronousStandbyNames: string; readonly standbys: readonly StandbySeen[] }
  | { readonly ok: false; readonly error: string };

const CHECK_SQL = `
SELECT pg_is_in_recovery() AS in_recovery,
       current_setting('cluster_name') AS cluster_name,
       pg_current_wal_lsn()::text AS lsn,
       current_setting('synchronous_standby_names') AS sync_names,
       coalesce((SELECT json_agg(json_build_object('name', application_name, 'state', state, 'flushLsn', flush_lsn::text, 'syncState', sync_state))
                   FROM pg_stat_replication WHERE application_name <> 'relevo_archiver'), '[]'::json) AS standbys`;

/** What the check's query returns. */
export interface PrimaryCheckRow {
  readonly in_recovery: boolean;
  readonly cluster_name: string;
  readonly lsn: string;
  readonly sync_names: string;
  readonly standbys: StandbySeen[];
}

/**
 * The check's verdict on what answered on `node`'s port. Who answers is
 * checked first, as readNodeFacts does: a restored copy, another home's
 * node or a server started by hand on a dead primary's port is no primary
 * of this cluster, and taking it for one would hold the failover back,
 * set synchronous_standby_names on a foreign server and fence the
 * cluster's real nodes as second primaries. Pure.
 */
export function primaryVerdict(row: PrimaryCheckRow, node: NodeRef, clusterName: string): PrimaryCheck {
  const expected = nodeClusterName(clusterName, node.name);
  if (row.cluster_name !== expected) {
    return {
      ok: false,
      error: `what answers on ${node.name}'s port is not ${node.name} (cluster_name ${row.cluster_name || "empty"}, not ${expected})`,
    };
  }
  if (row.in_recovery) return { ok: false, error: `${node.name} is in recovery (not a primary)` };
  return { ok: true, lsn: row.lsn, synchronousStandbyNames: row.sync_names, standbys: row.standbys };
}

/**
 * The monitor's check of the primary/**
 * The monitor's check of the primary, over a connection kept open between
 * checks (a connection per second would be waste), each with a short
 * deadline: a hung server answers nothing, so the deadline is the check. Any
 * failure drops the connection; the next check connects again.
 */
export class PrimaryChecker {
  private client: Client | null = null;
  private target: string | null = null;

  private readonly credentials: Credentials;
  private readonly timeoutMs: number;
  private readonly clusterName: string;

  constructor(options: { readonly credentials: Credentials; readonly timeoutMs: number; readonly clusterName: string }) {
    this.credentials = options.credentials;
    this.timeoutMs = options.timeoutMs;
    this.clusterName = options.clusterName;
  }

  async check(node: NodeRef): Promise<PrimaryCheck> {
    if (this.target !== node.name) this.drop();
    try {
      const client = await this.withDeadline(this.connection(node), "connect");
      const row = (await this.withDeadline(client.query(CHECK_SQL), "query")).rows[0] as PrimaryCheckRow;
      return primaryVerdict(row, node, this.clusterName);
    } catch (error) {
      this.drop();
      return { ok: false, error: (error as Error).message };
    }
  }

  close(): void {
    this.drop();
  }

  private async connection(node: NodeRef): Promise<Client> {
    if (this.client) return this.client;
    const client = new NodeClient(clientConfig(node, this.credentials, this.timeoutMs));
    client.on("error", () => {
      if (this.client === client) this.client = null;
    });
    this.client = client;
    this.target = node.name;
    await client.connect();
    return client;
  }

  private withDeadline<T>(work: Promise<T>, what: string): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer to ${what} within ${this.timeoutMs} ms`)), this.timeoutMs);
    });
    work.catch(() => undefined);
    return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
  }

  /** A hung server never answers a polite goodbye: the socket is destroyed. */
  private drop(): void {
    const client = this.client;
    this.client = null;
    this.target = null;
    if (!client) return;
    client.connection?.stream?.destroy();
    client.end().catch(() => undefined);
  }
}
