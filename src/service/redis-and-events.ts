import type Redis from "ioredis";
import { randomUUID } from "node:crypto";
import os from "node:os";
import { ErrorCode, RelevoError } from "../errors";
import type { PrimaryDatabase } from "../db/primary-database";
import { Consolidator } from "../events/consolidator";
import { EventLog } from "../events/event-log";
import { createRedisPubSub, publisherOf, type RedisPubSub } from "../events/redis-pubsub";
import { redisKeys, type RedisKeys } from "../redis/keys";
import { createRedisClient, type RedisEndpoint } from "../redis/redis-client";
import { clusterRedisServer, redisDirectory } from "../redis/redis-server";
import type { Secrets } from "../secrets/secrets-store";
import { redisCertificateHolder, redisClientCertificateHolder } from "../redis/redis-certificate";
import type { CertificateHolder } from "../tls/certificate-holder";
import type { LiveAuthority } from "../tls/live-authority";
import type { Cleanup, StartContext } from "./cleanups";

export interface RedisAndEvents {
  readonly endpoint: RedisEndpoint;
  /** Stops Relevo's own Redis (nothing for an external one); a stop told to keep Redis takes it out of the cleanups. */
  readonly stopServer: Cleanup;
  /** The connection for commands. */
  readonly client: Redis;
  /** The consolidator's own connection: it blocks on the event stream. */
  readonly blockingClient: Redis;
  /** The topology reader's connection for cache invalidations. */
  readonly invalidationClient: Redis;
  readonly keys: RedisKeys;
  /** Names this process in the leases it holds. */
  readonly instanceId: string;
  readonly pubSub: RedisPubSub;
  readonly events: EventLog;
  /**
   * Relevo's own Redis's certificates as holders (null for RELEVO_REDIS_URL's):
   * `server`, its server certificate with this process's client
   * certificate; `client`, the latter alone (another instance rotated).
   */
  readonly certificates: { readonly server: CertificateHolder; readonly client: CertificateHolder } | null;
}

/** Redis (Relevo's own, or the one RELEVO_REDIS_URL names), the connections to it, and the event log on it. */
export async function startRedisAndEvents(
  options: StartContext & { readonly secrets: Secrets; readonly servicesCa: LiveAuthority },
): Promise<RedisAndEvents> {
  const { config, logger, cleanups, secrets, servicesCa } = options;
  // Relevo's own Redis (TLS, certificates from the services CA, which its clients trust alone), or one run by
  // someone else (RELEVO_REDIS_URL), which it then neither starts nor stops.
  const {
    endpoint,
    handle: server,
    own,
  } = await clusterRedisServer(config, { password: secrets.redisPassword, issuer: servicesCa.authority }, logger);
  const stopServer = (): Promise<void> => server.stop();
  cleanups.push(stopServer);

  const client = createRedisClient(endpoint, { name: "commands" });
  const blockingClient = createRedisClient(endpoint, { name: "consolidator", blocking: true });
  const subscriberClient = createRedisClient(endpoint, { name: "subscriber", queueWhileOffline: true });
  const invalidationClient = createRedisClient(endpoint, { name: "invalidations", queueWhileOffline: true });
  cleanups.push(() => {
    for (const each of [client, blockingClient, subscriberClient, invalidationClient]) each.disconnect();
  });
  // Connected before anything reads the recorded state: with no offline queue, a read sent while the client still
  // connects fails, and a start that took that for "nothing recorded" would ignore the recorded primary and fences.
  await untilReady(client, REDIS_READY_TIMEOUT_MS, endpoint);
  const keys = redisKeys(config.clusterName);
  const instanceId = `${os.hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  const pubSub = createRedisPubSub(client, subscriberClient);
  const events = new EventLog(client, keys, publisherOf(pubSub), config.eventsMaxLength, logger);
  const issuer = (): LiveAuthority["authority"] => servicesCa.authority;
  const certificates = own && {
    server: redisCertificateHolder({
      redisDirectory: redisDirectory(config.home),
      issuer,
      addresses: [config.host],
      endpoint,
      client: own.client,
      commands: client,
      home: config.home,
    }),
    client: redisClientCertificateHolder({ issuer, client: own.client }),
  };
  return { endpoint, stopServer, client, blockingClient, invalidationClient, keys, instanceId, pubSub, events, certificates };
}

/** Copies the event stream into the database (the primary's, whichever that is). */
export function startConsolidator(
  options: StartContext & { readonly redis: RedisAndEvents; readonly database: PrimaryDatabase },
): Consolidator {
  const { config, logger, cleanups, redis, database } = options;
  const consolidator = new Consolidator(redis.blockingClient, redis.keys, database, logger, { keepLength: config.eventsMaxLength });
  consolidator.start();
  cleanups.push(() => consolidator.stop());
  return consolidator;
}

/** How long the start waits for its Redis connection: Redis was found answering (or started) just before. */
const REDIS_READY_TIMEOUT_MS = 10_000;

async function untilReady(client: Redis, timeoutMs: number, endpoint: RedisEndpoint): Promise<void> {
  if (client.status === "ready") return;
  let timer: NodeJS.Timeout | undefined;
  let onReady: (() => void) | undefined;
  const ready = await Promise.race([
    new Promise<boolean>((resolve) => client.once("ready", (onReady = () => resolve(true)))),
    new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs))),
  ]).finally(() => {
    clearTimeout(timer);
    if (onReady) client.off("ready", onReady);
  });
  if (!ready) {
    throw new RelevoError(
      ErrorCode.ServiceUnavailable,
      `Redis at ${endpoint.host}:${endpoint.port} did not accept a connection within ${timeoutMs / 1000} s: ` +
        "the cluster's recorded state cannot be read; check Redis and start again",
    );
  }
}
