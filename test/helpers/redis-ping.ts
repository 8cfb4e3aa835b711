import Redis from "ioredis";
import { connectionOptions, type RedisEndpoint } from "../../src/redis/redis-client";

/**
 * One PING on a new connection to `endpoint` (IPv4, no retry): "PONG", or
 * every error it met joined (the refusal's reason: a TLS alert, a reset, a
 * peer not proven to be Relevo's).
 */
export async function pingRedis(endpoint: RedisEndpoint): Promise<string> {
  const client = new Redis({
    ...connectionOptions(endpoint),
    family: 4,
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  const errors: string[] = [];
  client.on("error", (error: Error) => errors.push(error.message));
  try {
    await client.connect();
    return await client.ping();
  } catch (error) {
    return [(error as Error).message, ...errors].join("; ");
  } finally {
    client.disconnect();
  }
}
