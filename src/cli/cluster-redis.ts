import type Redis from "ioredis";
import type { RelevoConfig } from "../config/config";
import type { Logger } from "../log";
import { redisKeys, type RedisKeys } from "../redis/keys";
import { createRedisClient } from "../redis/redis-client";
import { clusterRedisServer } from "../redis/redis-server";
import type { Secrets } from "../secrets/secrets-store";
import { CertificateAuthority } from "../tls/certificate-authority";

/**
 * The cluster's Redis for a command run while the service is stopped:
 * Relevo's own is started for the command and stopped after it (unless it
 * was running already), an external one (RELEVO_REDIS_URL) only used.
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
    client.disconnect();
    if (handle.started) await handle.stop();
  }
}
