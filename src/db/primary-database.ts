import { PrismaPg } from "@prisma/adapter-pg";
import { PrismaClient } from "../generated/prisma/client";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import type { NodeRef } from "../nodes/node-driver";
import { clientConfig, withNodeClient, type Credentials } from "../postgres/connection";
import { NodeClient } from "../postgres/node-client";
import { applyMigrations } from "./migrate";

export type { PrismaClient };

/**
 * Prisma on the cluster's current primary. Neither `pg` nor Prisma's adapter
 * understands multi-host URLs or target_session_attrs, so Relevo follows the
 * primary itself: when the topology names a new primary, the client is rebuilt
 * against it (and pending migrations applied there).
 */
export class PrimaryDatabase {
  private current: { node: NodeRef; prisma: PrismaClient; migrated: boolean } | null = null;

  constructor(
    private readonly credentials: Credentials,
    private readonly timeoutMs: number,
    private readonly logger: Logger,
  ) {}

  get primaryName(): string | null {
    return this.current?.node.name ?? null;
  }

  /** Points at `node` (no-op when it already does). */
  async follow(node: NodeRef | null): Promise<void> {
    if (node && this.current?.node.name === node.name && this.current.node.port === node.port) return;
    const previous = this.current;
    this.current = null;
    await previous?.prisma.$disconnect().catch(() => undefined);
    if (node === null) return;
    this.current = { node, prisma: new PrismaClient({ adapter: primaryAdapter(node, this.credentials, this.timeoutMs) }), migrated: false };
    this.logger.info({ node: node.name }, "database client follows the primary");
  }

  /** The client for the current primary, migrations applied; SERVICE_UNAVAILABLE without a primary. */
  async client(): Promise<PrismaClient> {
    const current = this.current;
    if (!current) throw new RelevoError(ErrorCode.ServiceUnavailable, "no primary is known: the database is unavailable");
    if (!current.migrated) {
      await withNodeClient(current.node, this.credentials, 60000, (client) => applyMigrations(client, this.logger));
      current.migrated = true;
    }
    return current.prisma;
  }

  async close(): Promise<void> {
    await this.follow(null);
  }
}

/**
 * Prisma's adapter for `node`: a pg.Pool of NodeClients (pg.Pool takes the
 * class its connections are made of), so the records' connections refuse a
 * cleartext or MD5 password request as every other connection of Relevo's.
 */
export function primaryAdapter(node: NodeRef, credentials: Credentials, timeoutMs: number): PrismaPg {
  return new PrismaPg({ ...clientConfig(node, credentials, timeoutMs), Client: NodeClient, max: 4, idleTimeoutMillis: 10000 });
}
