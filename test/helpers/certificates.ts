import { execFile } from "node:child_process";
import { promisify } from "node:util";
import type { NodeRef } from "../../src/nodes/node-driver";
import { connectionUri, fixedTrust } from "../../src/postgres/connection";
import { uriTlsParameters } from "../../src/postgres/tls-settings";
import type { Secrets } from "../../src/secrets/secrets-store";
import { sqlOn } from "./sql";
import { servedCertificate } from "./tls";

const run = promisify(execFile);

/** The serial of the certificate `node` presents to a new client now (upper-case hexadecimal). */
export async function servedSerial(node: NodeRef, secrets: Secrets): Promise<string> {
  return (await servedCertificate(node, secrets.superuserPassword)).serialNumber.toUpperCase();
}

/** When the node's postmaster started: a restart changes it, a configuration reload does not. */
export async function postmasterStart(node: NodeRef, secrets: Secrets): Promise<string> {
  const [row] = await sqlOn<{ started: string }>(node, secrets, "SELECT pg_postmaster_start_time()::text AS started");
  return row!.started;
}

/** A libpq login (psql) with verify-full against `caFile` alone: "ok", or psql's error. */
export async function libpqLogin(node: NodeRef, secrets: Secrets, caFile: string): Promise<string> {
  const uri = connectionUri(
    [node],
    { user: "postgres", password: secrets.superuserPassword, database: "postgres", trustedCa: fixedTrust("") },
    uriTlsParameters(caFile),
  );
  return run("psql", [uri, "-XAtc", "SELECT 'ok'"]).then(
    ({ stdout }) => stdout.trim(),
    (error: Error & { stderr?: string }) => error.stderr ?? error.message,
  );
}
