import { findWritablePrimary } from "../cluster/bootstrap";
import { apiTransport } from "../config/api-transport";
import { loadMembers } from "../cluster/membership";
import { connectionUri, fixedTrust } from "../postgres/connection";
import { ROLE_SUPERUSER } from "../postgres/managed-settings";
import { observeClusterOnce } from "../cluster/topology-observe";
import type { RelevoConfig } from "../config/config";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import { createNodeDriver, usingDriver } from "../nodes/create-driver";
import { readSecrets } from "../secrets/secrets-store";
import { uriTlsParameters } from "../postgres/tls-settings";
import { readTrustedCa } from "../tls/certificate-authority";
import { trustOnlyTlsSource } from "../tls/node-tls";
import { issueToken } from "../secrets/token-registry";
import { startRelevo, type StartOptions } from "../service";
import { formatStatus } from "./format-status";

export interface Output {
  out(text: string): void;
  /** Whether what is written goes to a terminal (else to a file, a pipe, or a container's log). */
  readonly terminal: boolean;
}

/**
 * The operator token on `relevo up`'s banner: only to a terminal. Standard
 * output that is not one ends up in a log (a container's, a service
 * manager's), and secrets never go to logs; `relevo token` prints one on demand.
 */
export function bannerToken(token: string, output: Output): string {
  return output.terminal ? token : `not printed (standard output is not a terminal): run "relevo token"`;
}

/** `relevo up`: the embedded default in the foreground until SIGINT / SIGTERM. */
export async function upCommand(config: RelevoConfig, options: StartOptions, logger: Logger, output: Output): Promise<void> {
  const service = await startRelevo(config, logger, options);
  // Minted (and recorded) only when it is shown: one a log would never show is one nobody can revoke knowingly.
  const banner = output.terminal
    ? (await issueToken(config.home, service.secrets.tokenKey, { role: "operator", ttlMs: config.tokenTtl, label: "relevo up" })).token
    : "";
  output.out(
    [
      "",
      `Relevo is up: cluster ${config.clusterName}, ${service.nodes.length} nodes (${service.driver.kind} driver)`,
      `  GraphQL and GraphiQL: ${service.apiUrl}`,
      ...(apiTransport(config).phase === "http-plaintext-accepted"
        ? [`  WARNING: the API is plain HTTP on ${config.host} (RELEVO_API_TLS=off): tokens travel in clear`]
        : []),
      `  Operator token:       ${bannerToken(banner, output)}`,
      `  (GraphiQL: Headers tab → { "Authorization": "Bearer <token>" }; more tokens: relevo token --role viewer)`,
      `  Data home:            ${config.home}`,
      `Press Ctrl-C to stop the API${config.redisUrl ? "" : ", Redis"} and PostgreSQL.`,
      "",
    ].join("\n"),
  );
  await new Promise<void>((resolve) => {
    const shutdown = (signal: NodeJS.Signals): void => {
      process.off("SIGINT", shutdown);
      process.off("SIGTERM", shutdown);
      logger.info({ signal }, "stopping");
      service
        .stop({ reason: signal })
        .catch((error) => logger.error({ err: (error as Error).message }, "clean stop failed"))
        .finally(resolve);
    };
    process.on("SIGINT", shutdown);
    process.on("SIGTERM", shutdown);
  });
  output.out("Relevo stopped.");
  // Everything Relevo started is stopped; a library timer left behind (Agenda
  // keeps a lock keep-alive per finished job) must not hold the process.
  setTimeout(() => process.exit(process.exitCode ?? 0), 1000).unref();
}

export async function statusCommand(config: RelevoConfig, options: { json: boolean }, output: Output): Promise<void> {
  const secrets = await readSecrets(config.home);
  const trust = await readTrustedCa(config);
  const nodes = await loadMembers(config);
  // No node is started here: the driver is given no certificates to issue.
  const snapshot = await usingDriver(createNodeDriver(config, { tls: trustOnlyTlsSource(trust.pem) }), (driver) =>
    observeClusterOnce({
      clusterName: config.clusterName,
      nodes,
      driver,
      credentials: { user: ROLE_SUPERUSER, password: secrets.superuserPassword, database: "postgres", trustedCa: fixedTrust(trust.pem) },
      timeoutMs: config.nodeTimeoutMs,
      lagAlertBytes: config.lagAlertBytes,
    }),
  );
  output.out(options.json ? JSON.stringify(snapshot, null, 2) : formatStatus(snapshot));
}

export async function urlCommand(
  config: RelevoConfig,
  options: { node?: string; multiHost: boolean; database: string },
  output: Output,
): Promise<void> {
  const secrets = await readSecrets(config.home);
  const trust = await readTrustedCa(config);
  const nodes = await loadMembers(config);
  const credentials = {
    user: ROLE_SUPERUSER,
    password: secrets.superuserPassword,
    database: options.database,
    trustedCa: fixedTrust(trust.pem),
  };
  const tls = uriTlsParameters(trust.file);
  if (options.multiHost) {
    // libpq tries the hosts in order and keeps the one that accepts writes.
    output.out(connectionUri(nodes, credentials, { target_session_attrs: "read-write", connect_timeout: "5", ...tls }));
    return;
  }
  let node = options.node ? nodes.find((candidate) => candidate.name === options.node) : undefined;
  if (options.node && !node) {
    throw new RelevoError(ErrorCode.NotFound, `no node named "${options.node}"; nodes are ${nodes.map((n) => n.name).join(", ")}`);
  }
  if (!node) {
    const primary = await findWritablePrimary({ config, secrets, trustedCa: fixedTrust(trust.pem) }, nodes);
    if (!primary)
      throw new RelevoError(
        ErrorCode.ServiceUnavailable,
        "no node is a reachable primary; name a node (relevo url node2) or use --multi-host",
      );
    node = primary;
  }
  output.out(connectionUri([node], credentials, tls));
}
