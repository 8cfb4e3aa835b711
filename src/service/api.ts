import { startApiServer, type ApiCertificate, type RunningApi } from "../api/server";
import { MAX_OPERATIONS_PER_SOCKET, MAX_PENDING_SOCKETS_PER_ADDRESS, maxPendingSockets } from "../api/socket-admission";
import type { BackupService } from "../backup/backup-service";
import type { CertificateRotation } from "../cluster/certificate-rotation";
import type { TopologyCollector } from "../cluster/topology-collector";
import { TopologyReader } from "../cluster/topology-reader";
import type { FailoverService } from "../failover/failover-service";
import type { NodeRef } from "../nodes/node-driver";
import type { BackupScheduler } from "../scheduler/backup-scheduler";
import type { Secrets } from "../secrets/secrets-store";
import { TokenAccess } from "../secrets/token-access";
import { apiTransport } from "../config/api-transport";
import type { RelevoConfig } from "../config/config";
import { readConfiguredFile } from "../config/configured-file";
import { UnreachableCaseError } from "../errors";
import type { Logger } from "../log";
import type { CertificateHolder, RenewalOutcome } from "../tls/certificate-holder";
import { caFiles } from "../tls/certificate-authority";
import { certificateFacts } from "../tls/issued-certificates";
import type { LiveAuthority } from "../tls/live-authority";
import type { StartContext } from "./cleanups";
import type { RepositoryReporter } from "../repository/repository-report";
import type { RedisAndEvents } from "./redis-and-events";

/** The GraphQL API, last: it answers only once everything it serves runs. */
export async function startApi(
  options: StartContext & {
    readonly secrets: Secrets;
    /** The services CA: it issues the API's certificate under RELEVO_API_TLS=on (never the nodes' CA: see prerequisites.ts). */
    readonly servicesCa: LiveAuthority;
    readonly redis: RedisAndEvents;
    readonly nodes: readonly NodeRef[];
    readonly collector: TopologyCollector;
    readonly backups: BackupService;
    readonly repositories: Pick<RepositoryReporter, "list">;
    readonly scheduler: BackupScheduler;
    readonly failover: FailoverService;
    readonly certificates: CertificateRotation;
  },
): Promise<RunningApi> {
  const { config, logger, cleanups, servicesCa, redis, nodes, collector, backups, scheduler, failover, certificates, repositories } =
    options;
  const tls = await apiCertificate(config, servicesCa.authority, logger);
  const topology = new TopologyReader(redis.client, redis.invalidationClient, redis.keys, logger);
  await topology.start();
  const tokens = await TokenAccess.open({ home: config.home, logger });
  cleanups.push(() => tokens.close());
  const api = await startApiServer(
    {
      redis: redis.client,
      keys: redis.keys,
      events: redis.events,
      collector,
      topology,
      tokens,
      logger,
      backups,
      repositories,
      nodes,
      scheduler,
      failover,
      certificates,
      caFile: caFiles(config).certificateFile,
    },
    redis.pubSub,
    {
      host: config.host,
      port: config.apiPort,
      maxDepth: config.apiMaxDepth,
      maxComplexity: config.apiMaxComplexity,
      rateLimit: { perSecond: config.apiRateLimitPerSecond, burst: config.apiRateLimitBurst },
      refusalWindowMs: config.apiRefusalWindowMs,
      socketLimits: {
        maxSockets: config.apiMaxWebSockets,
        maxSocketsPerToken: config.apiMaxWebSocketsPerToken,
        maxPendingPerAddress: MAX_PENDING_SOCKETS_PER_ADDRESS,
        maxPending: maxPendingSockets(config.apiMaxWebSockets),
        maxOperationsPerSocket: MAX_OPERATIONS_PER_SOCKET,
      },
      tls,
    },
  );
  cleanups.push(() => api.stop());
  if (tls && api.replaceCertificate) {
    const holder = apiCertificateHolder({ config, servicesCa, port: api.port, replace: api.replaceCertificate, first: tls });
    // Issued in memory by this instance (not the operator's files): another instance's CA rotation must reach it too.
    certificates.include(holder, { rotate: true, followCa: holder.fromRelevoCa !== false });
  }
  return api;
}

/**
 * The API's HTTPS certificate as a holder: issued again by the services CA as it is
 * now (or, when it is the operator's, RELEVO_API_TLS_CERT_FILE and
 * RELEVO_API_TLS_KEY_FILE read again) and given to the connections
 * accepted from then on, without a restart. A pair that does not make a
 * TLS context is refused and the previous one kept.
 */
function apiCertificateHolder(options: {
  readonly config: RelevoConfig;
  readonly servicesCa: LiveAuthority;
  readonly port: number;
  readonly replace: (tls: ApiCertificate) => void;
  readonly first: ApiCertificate;
}): CertificateHolder {
  const holder = `api:${options.port}`;
  let current = options.first;
  const fromRelevoCa = apiTransport(options.config).phase === "https-issued";
  return {
    holder,
    fromRelevoCa,
    held: () => current.certificatePem,
    renew: async (): Promise<RenewalOutcome> => {
      const next = await apiCertificate(options.config, options.servicesCa.authority);
      const previousSerial = certificateFacts(current.certificatePem).serial;
      if (next === undefined) return { phase: "failed", holder, reason: "the API no longer has a certificate to serve" };
      try {
        options.replace(next);
      } catch (error) {
        return { phase: "refused", holder, reason: (error as Error).message, serial: previousSerial };
      }
      current = next;
      return { phase: "renewed", holder, serial: certificateFacts(next.certificatePem).serial, previousSerial };
    },
  };
}

/**
 * The API's certificate and key, by its transport (src/config/api-transport.ts):
 * the operator's files, or one the services CA issues for the API's addresses at
 * each start (kept in memory only); none for plain HTTP, which off loopback
 * is said loudly (RELEVO_API_TLS=off).
 */
async function apiCertificate(
  config: RelevoConfig,
  ca: Pick<LiveAuthority["authority"], "issueServerCertificate">,
  logger?: Logger,
): Promise<ApiCertificate | undefined> {
  const transport = apiTransport(config);
  switch (transport.phase) {
    case "https-files":
      return {
        certificatePem: await readConfiguredFile(transport.certificateFile, "RELEVO_API_TLS_CERT_FILE"),
        keyPem: await readConfiguredFile(transport.keyFile, "RELEVO_API_TLS_KEY_FILE", { secret: true }),
      };
    case "https-issued":
      return ca.issueServerCertificate({ commonName: "api", addresses: transport.addresses });
    case "http-loopback":
      return undefined;
    case "http-plaintext-accepted":
      logger?.warn(
        { host: config.host, env: "RELEVO_API_TLS" },
        `THE API IS PLAIN HTTP ON ${config.host}, AN ADDRESS OTHER MACHINES CAN REACH (RELEVO_API_TLS=off): ` +
          "bearer tokens and every answer travel in clear; set RELEVO_API_TLS=on or give RELEVO_API_TLS_CERT_FILE",
      );
      return undefined;
    default:
      throw new UnreachableCaseError(transport);
  }
}
