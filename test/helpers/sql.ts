import { Client } from "pg";
import type { NodeRef } from "../../src/nodes/node-driver";
import type { Secrets } from "../../src/secrets/secrets-store";
import { testClientSsl } from "./tls";

/** Runs SQL on a node as the superuser, like an operator with `relevo url` would. */
export async function sqlOn<T = Record<string, unknown>>(
  node: NodeRef,
  secrets: Secrets,
  text: string,
  params: unknown[] = [],
  database = "postgres",
): Promise<T[]> {
  const client = new Client({
    host: node.host,
    port: node.port,
    user: "postgres",
    password: secrets.superuserPassword,
    database,
    connectionTimeoutMillis: 5000,
    ssl: testClientSsl(),
  });
  await client.connect();
  try {
    return (await client.query(text, params)).rows as T[];
  } finally {
    await client.end();
  }
}
