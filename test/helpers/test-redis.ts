import type Redis from "ioredis";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { loadConfig } from "../../src/config/config";
import { createLogger } from "../../src/log";
import { createRedisClient } from "../../src/redis/redis-client";
import { ensureRedisServer, type RedisServerHandle } from "../../src/redis/redis-server";
import { freePort } from "./ports";
import { testRedisTls } from "./tls";

/**
 * A real Redis server (Relevo's own kind: TLS only) for the tests of one
 * file, on a free port, and a client of it that is ready: started before
 * the file's tests, stopped and removed after them.
 */
export function useTestRedis(label: string): { readonly client: () => Redis; readonly home: () => string } {
  let home: string;
  let server: RedisServerHandle | undefined;
  let redis: Redis | undefined;
  beforeAll(async () => {
    home = await mkdtemp(path.join(os.tmpdir(), `${label}-`));
    const port = await freePort();
    const password = `${label}-test-password`;
    server = await ensureRedisServer({
      home,
      host: "127.0.0.1",
      port,
      password,
      bin: loadConfig({}).redisServerBin,
      startTimeoutMs: 10000,
      logger: createLogger({ level: "silent" }),
      tls: await testRedisTls(),
    });
    redis = createRedisClient({ host: "127.0.0.1", port, password, tls: (await testRedisTls()).client }, { name: `${label}-test` });
    // The service's client has no offline queue: wait until it is connected.
    if (redis.status !== "ready") await new Promise((resolve) => redis!.once("ready", resolve));
  });
  afterAll(async () => {
    redis?.disconnect();
    await server?.stop();
    await rm(home, { recursive: true, force: true });
  });
  return {
    client: () => {
      if (!redis) throw new Error(`the ${label} test's Redis did not start`);
      return redis;
    },
    /** The server's data home (its pid file: `redis/redis.pid`). */
    home: () => home,
  };
}
