import http from "node:http";
import { rootCertificates } from "node:tls";
import { apiTransport, apiUrl, isHttps } from "../config/api-transport";
import type { RelevoConfig } from "../config/config";
import { ErrorCode, isRelevoError, RelevoError } from "../errors";
import { readSecrets } from "../secrets/secrets-store";
import { CLI_TOKEN_TTL_MS, mintToken } from "../secrets/tokens";
import { readConfiguredFile } from "../config/configured-file";
import { readTrustedCa } from "../tls/certificate-authority";
import { firstCertificate } from "../tls/pem-bundle";
import { apiTrustedUids, OwnApiAgent } from "./api-peer";

/**
 * The CLI's commands that act on the running service go through its GraphQL
 * API, with an operator token minted from the data home's key, so that they
 * obey the same rules (one backup at a time, audit events) as any client.
 * The token lives 15 minutes, is never shown nor recorded (one per command
 * would fill the registry), and is checked when each request starts: a
 * mutation that runs longer (a re-seed) is not cut short. The token is
 * written only on a connection proven to be served by Relevo's own service
 * (api-peer.ts): a stranger on the API's port gets nothing (API_NOT_OURS).
 */
export async function callApi<T>(config: RelevoConfig, query: string, variables: Record<string, unknown> = {}): Promise<T> {
  const secrets = await readSecrets(config.home);
  const transport = apiTransport(config);
  const url = apiUrl({ host: config.host, port: config.apiPort, https: isHttps(transport) });
  // HTTPS: the agent proves the server's uid first, then verifies its certificate against `trust` and the host.
  const trust = isHttps(transport)
    ? await apiTrust(config, transport.phase === "https-files" ? transport.certificateFile : null)
    : undefined;
  const agent = new OwnApiAgent({
    trustedUids: await apiTrustedUids(config.home),
    tls: trust ? { ...trust, host: config.host } : undefined,
  });
  let text: string;
  try {
    text = await post(
      { host: config.host, port: config.apiPort },
      { agent, headers: { authorization: `Bearer ${mintToken(secrets.tokenKey, "operator", { ttlMs: CLI_TOKEN_TTL_MS }).token}` } },
      JSON.stringify({ query, variables }),
    );
  } catch (error) {
    if (isRelevoError(error)) throw error; // API_NOT_OURS: said as it is
    throw new RelevoError(ErrorCode.ServiceUnavailable, `Relevo's API does not answer at ${url}: is \`relevo up\` running?`, {
      cause: error,
    });
  } finally {
    agent.destroy();
  }
  const body = JSON.parse(text) as { data?: T; errors?: Array<{ message: string; extensions?: { code?: string } }> };
  const first = body.errors?.[0];
  if (first) {
    const code = Object.values(ErrorCode).includes(first.extensions?.code as ErrorCode)
      ? (first.extensions!.code as ErrorCode)
      : ErrorCode.Internal;
    throw new RelevoError(code, first.message);
  }
  return body.data as T;
}

/**
 * What the CLI trusts for an HTTPS API: the services CA (always the data
 * home's), which issues the API's certificate under RELEVO_API_TLS=on, and
 * never the nodes' CA, whose leaves' keys the PostgreSQL OS user reads.
 * With the operator's own certificate (RELEVO_API_TLS_CERT_FILE, from any
 * CA, a private one included), that very certificate, pinned: the CLI
 * reads the file the API serves, and a partial chain lets the leaf itself
 * be the anchor; Node's root CAs too, for a chain the file lacks.
 */
export async function apiTrust(
  config: RelevoConfig,
  ownCertificateFile: string | null,
): Promise<{ ca: string[]; allowPartialTrustChain: boolean }> {
  const ca = (await readTrustedCa(config, "services")).pem;
  if (ownCertificateFile === null) return { ca: [ca], allowPartialTrustChain: false };
  const pinned = firstCertificate(await readConfiguredFile(ownCertificateFile, "RELEVO_API_TLS_CERT_FILE"), ownCertificateFile);
  return { ca: [...rootCertificates, ca, pinned], allowPartialTrustChain: true };
}

/**
 * POST with node:http rather than fetch: fetch (undici) gives up on a
 * response whose headers take more than 300 s, and mutations such as
 * rejoinNode (a re-seed) or verifyBackup with a restore test answer only when
 * they are done. node:http waits as long as the connection lives. Over
 * HTTPS too: the agent hands over a TLS socket it opened on the proven
 * connection, so the request itself speaks HTTP on it.
 */
function post(
  target: { readonly host: string; readonly port: number },
  options: { agent: OwnApiAgent; headers: Record<string, string> },
  body: string,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const request = http.request(
      {
        host: target.host,
        port: target.port,
        path: "/graphql",
        method: "POST",
        agent: options.agent,
        headers: { ...options.headers, "content-type": "application/json", "content-length": Buffer.byteLength(body) },
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
        response.on("error", reject);
      },
    );
    request.on("error", reject);
    request.end(body);
  });
}
