import type Redis from "ioredis";
import type { RelevoConfig } from "../config/config";
import type { Logger } from "../log";
import { redisKeys, type RedisKeys } from "../redis/keys";
import { createRedisClient } from "../redis/redis-client";
import { clusterRedisServer } from "../redis/redis-server";
import type { Secrets } from "../secrets/secrets-store";
import { CertificateAuthority } from "../tls/certificate-authority";
import { settlesWithin } from "../util/sleep";

/**
 * The cluster's Redis for a command run while the service is stopped:
 * Relevo's own is started for the command and stopped after it (unless it
 * was running already, or another client uses it by then: a `relevo up`
 * started meanwhile adopts it), an external one (RELEVO_REDIS_URL) only used.
 */
export async function withClusterRedis<T>(
  config: RelevoConfig,
  secrets: Secrets,
  logger: Logger,
  work: (redis: Redis, keys: RedisKeys) => Promise<T>,
): Promise<T> {
  // Relevo's own Redis asks for a client certificate: this command issues itself one from the services CA.
  const ca = await CertificateAuthority.load(config, { role: "services" });
  const { endpoint, handle } = await clusterRedisServer(config, { password: secrets.redisPassword, issuer: ca }, logger);
  // Queued while connecting: the server answered just now.
  const client = createRedisClient(endpoint, { name: "cli", queueWhileOffline: true });
  try {
    return await work(client, redisKeys(config.clusterName));
  } finally {
    const others = handle.started ? await otherClients(client) : 0;
    client.disconnect();
    if (others > 0) logger.info({ clients: others }, "Redis, started for this command, is left running: other clients use it now");
    else if (handle.started) await handle.stop();
  }
}

/** How many clients besides `client` are connected to its server; unknown (Redis gone) counts as none. */
async function otherClients(client: Redis): Promise<number> {
  const list = await settledValue(client.client("LIST") as Promise<string>, 2000);
  return list === null ? 0 : Math.max(0, list.split("\n").filter((line) => line.trim() !== "").length - 1);
}

/** `promise`'s value if it resolves within `ms`, else null. */
async function settledValue<T>(promise: Promise<T>, ms: number): Promise<T | null> {
  const outcome = promise.then(
    (value) => value,
    () => null,
  );
  return (await settlesWithin(outcome, ms)) ? outcome : null;
}
