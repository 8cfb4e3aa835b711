import { Client } from "pg";
import { clientConfig, type Credentials } from "../postgres/connection";
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
       pg_current_wal_lsn()::text AS lsn,
       current_setting('synchronous_standby_names') AS sync_names,
       coalesce((SELECT json_agg(json_build_object('name', application_name, 'state', state, 'flushLsn', flush_lsn::text, 'syncState', sync_state))
                   FROM pg_stat_replication WHERE application_name <> 'relevo_archiver'), '[]'::json) AS standbys`;

/**
 * The monitor's check of the primary, over a connection kept open between
 * checks (a connection per second would be waste), each with a short
 * deadline: a hung server answers nothing, so the deadline is the check. Any
 * failure drops the connection; the next check connects again.
 */
export class PrimaryChecker {
  private client: Client | null = null;
  private target: string | null = null;

  constructor(
    private readonly credentials: Credentials,
    private readonly timeoutMs: number,
  ) {}

  async check(node: NodeRef): Promise<PrimaryCheck> {
    if (this.target !== node.name) this.drop();
    try {
      const client = await this.withDeadline(this.connection(node), "connect");
      const row = (await this.withDeadline(client.query(CHECK_SQL), "query")).rows[0] as {
        in_recovery: boolean;
        lsn: string;
        sync_names: string;
        standbys: StandbySeen[];
      };
      if (row.in_recovery) return { ok: false, error: `${node.name} is in recovery (not a primary)` };
      return { ok: true, lsn: row.lsn, synchronousStandbyNames: row.sync_names, standbys: row.standbys };
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
    const client = new Client(clientConfig(node, this.credentials, this.timeoutMs));
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
