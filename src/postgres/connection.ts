import type { Client } from "pg";
import type { NodeRef } from "../nodes/node-driver";
import { NodeClient, type NodeClientConfig } from "./node-client";

export interface Credentials {
  readonly user: string;
  readonly password: string;
  readonly database: string;
  /** The CA certificates (PEM) a node's certificate must be signed by: the only trust anchors, the system's are not used. */
  readonly trustedCa: TrustAnchors;
}

/**
 * The CA certificates a client trusts, read at each new connection: one
 * CA, or the new and the old one during a CA rotation (a LiveAuthority's
 * `trust` changes under a running service without a restart).
 */
export interface TrustAnchors {
  readonly pem: string;
}

/** Trust that never changes (a CLI command's, a test's). */
export function fixedTrust(pem: string): TrustAnchors {
  return { pem };
}

/**
 * The configuration of a NodeClient (or of Prisma's pool of them) for
 * `node`: TLS, verify-full. Node's TLS checks the chain against the CA
 * alone and the certificate against the host connected to (an IP address
 * against its iPAddress entries, a name against its dNSName ones, as libpq
 * does); SCRAM-SHA-256-PLUS binds the authentication to that certificate,
 * so a SCRAM exchange cannot be relayed through another TLS session.
 */
export function clientConfig(node: NodeRef, credentials: Credentials, timeoutMs: number): NodeClientConfig {
  const trust = credentials.trustedCa;
  return {
    // A getter: pg copies `ssl` into the TLS options at each connect (Object.assign), so a long-lived
    // pool (Prisma's) trusts what the CA is at that moment, not at its creation.
    ssl: {
      get ca(): string {
        return trust.pem;
      },
      rejectUnauthorized: true,
    },
    enableChannelBinding: true,
    nodeName: node.name,
    host: node.host,
    port: node.port,
    user: credentials.user,
    password: credentials.password,
    database: credentials.database,
    connectionTimeoutMillis: timeoutMs,
    query_timeout: timeoutMs,
    statement_timeout: timeoutMs,
    application_name: "relevo",
  };
}

/** One short-lived connection for one piece of work; always closed. */
export async function withNodeClient<T>(
  node: NodeRef,
  credentials: Credentials,
  timeoutMs: number,
  work: (client: Client) => Promise<T>,
): Promise<T> {
  const client = new NodeClient(clientConfig(node, credentials, timeoutMs));
  client.on("error", () => undefined); // a dropped connection surfaces through the pending query
  await client.connect();
  try {
    return await work(client);
  } finally {
    await closeWithin(client, timeoutMs);
  }
}

/**
 * Ends a connection politely, or destroys its socket when the server does
 * not answer the goodbye within `timeoutMs`: a hung (frozen, paused) server
 * never does, and an await on it would hang its caller for good — the
 * failover monitor's round among them.
 */
async function closeWithin(client: Client, timeoutMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const ended = client.end().then(
    () => true,
    () => true,
  );
  const gaveUp = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
  const polite = await Promise.race([ended, gaveUp]).finally(() => clearTimeout(timer));
  if (!polite) client.connection?.stream?.destroy();
}

/** libpq connection URI (for operators and libpq clients, never logged). */
export function connectionUri(nodes: readonly NodeRef[], credentials: Credentials, params: Record<string, string> = {}): string {
  return libpqUri(
    nodes,
    `${encodeURIComponent(credentials.user)}:${encodeURIComponent(credentials.password)}@`,
    credentials.database,
    params,
  );
}

/** libpq connection URI without credentials: safe to show any API client, which brings its own (PGUSER, PGPASSWORD, .pgpass). */
export function connectionUriWithoutCredentials(
  nodes: readonly Pick<NodeRef, "host" | "port">[],
  database: string,
  params: Record<string, string> = {},
): string {
  return libpqUri(nodes, "", database, params);
}

function libpqUri(
  nodes: readonly Pick<NodeRef, "host" | "port">[],
  userInfo: string,
  database: string,
  params: Record<string, string>,
): string {
  const hosts = nodes.map((node) => `${node.host}:${node.port}`).join(",");
  const query = new URLSearchParams(params).toString();
  return `postgresql://${userInfo}${hosts}/${encodeURIComponent(database)}${query ? `?${query}` : ""}`;
}
