import Redis, { type RedisOptions } from "ioredis";
import { ErrorCode, RelevoError } from "../errors";
import { OwnRedisConnector } from "./redis-peer";
import { clientTlsOptions, type RedisClientTls } from "./redis-tls";

export interface RedisEndpoint {
  readonly host: string;
  readonly port: number;
  readonly password: string;
  /**
   * RELEVO_REDIS_URL's server, run by someone else (maybe in another
   * container): its connections cannot be proven Relevo's and are not.
   * Absent or false: Relevo's own Redis, every connection proven to be run
   * by Relevo's own user before AUTH is sent (redis-peer.ts).
   */
  readonly external?: boolean;
  /**
   * TLS: what the client presents and trusts. Relevo's own Redis always has
   * it (its client certificate, its CA); RELEVO_REDIS_URL's when it is a
   * rediss:// URL. Absent: plain TCP (a redis:// URL).
   */
  readonly tls?: RedisClientTls;
}

/**
 * The endpoint of RELEVO_REDIS_URL (redis:// or rediss://, [:password@]host[:port]):
 * a rediss:// one with TLS that trusts Node's root CAs until the caller adds
 * RELEVO_REDIS_CA_FILE and the client certificate. Pure.
 */
export function parseRedisUrl(url: string): RedisEndpoint {
  const parsed = new URL(url);
  return {
    host: parsed.hostname,
    port: Number(parsed.port || 6379),
    password: decodeURIComponent(parsed.password),
    external: true,
    ...(parsed.protocol === "rediss:" ? { tls: {} } : {}),
  };
}

/** ioredis's connection options of an endpoint: address, password, TLS, and the proving connector for Relevo's own. */
export function connectionOptions(endpoint: RedisEndpoint): RedisOptions {
  return {
    host: endpoint.host,
    port: endpoint.port,
    password: endpoint.password,
    ...(endpoint.tls ? { tls: clientTlsOptions(endpoint.tls) } : {}),
    ...connectorFor(endpoint),
  };
}

/** The connector of the endpoint's connections: the proving one for Relevo's own Redis. */
export function connectorFor(endpoint: Pick<RedisEndpoint, "external">): { Connector?: typeof OwnRedisConnector } {
  return endpoint.external ? {} : { Connector: OwnRedisConnector };
}

/**
 * Clients fail fast while Redis is away (no offline queue, one attempt per
 * command) so that an API request answers SERVICE_UNAVAILABLE at once instead
 * of hanging; the connection itself keeps retrying and everything resumes
 * when Redis is back.
 */
export function createRedisClient(
  endpoint: RedisEndpoint,
  options: { name: string; blocking?: boolean; queueWhileOffline?: boolean },
): Redis {
  const client = new Redis({
    ...connectionOptions(endpoint),
    connectionName: `relevo:${options.name}`,
    enableOfflineQueue: options.queueWhileOffline ?? false,
    maxRetriesPerRequest: options.blocking || options.queueWhileOffline ? null : 1,
    connectTimeout: 2000,
    disconnectTimeout: 100,
    retryStrategy: (attempt) => Math.min(attempt * 200, 2000),
  });
  client.on("error", () => undefined); // state is read from `client.status`; errors surface per command
  return client;
}

/** Runs a Redis operation, turning a connection failure into SERVICE_UNAVAILABLE. */
export async function redisCall<T>(what: string, operation: () => Promise<T>): Promise<T> {
  try {
    return await operation();
  } catch (error) {
    throw new RelevoError(ErrorCode.ServiceUnavailable, `Redis is unavailable (${what}): ${(error as Error).message}; retry shortly`, {
      cause: error,
    });
  }
}
