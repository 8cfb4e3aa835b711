import type { Client } from "pg";
import { NodeClient } from "../postgres/node-client";
import { clientConfig, type Credentials } from "../postgres/connection";
import type { NodeRef } from "../nodes/node-driver";

/**
 * The one dedicated connection a backup's pg_backup_start and pg_backup_stop
 * run on, held for the whole copy: if that session ends, PostgreSQL aborts
 * the backup, and so do we (the copy checks `throwIfLost` as it goes).
 */
export class BackupSession {
  readonly client: Client;
  private lost: Error | null = null;

  constructor(options: { readonly source: NodeRef; readonly superuser: Credentials }) {
    this.client = new NodeClient({
      ...clientConfig(options.source, options.superuser, 60000),
      statement_timeout: 0,
      query_timeout: undefined,
    });
    this.client.on("error", (error) => (this.lost = error));
  }

  /** The error that ended the session under us; null while it holds. */
  get failure(): Error | null {
    return this.lost;
  }

  throwIfLost(): void {
    if (this.lost) throw this.lost;
  }

  async connect(): Promise<void> {
    await this.client.connect();
  }

  /** Closes the session; closing one already gone is not an error. */
  async end(): Promise<void> {
    await this.client.end().catch(() => undefined);
  }
}
