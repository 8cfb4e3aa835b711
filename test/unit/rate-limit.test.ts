import type Redis from "ioredis";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { RATE_LIMIT_WAIT_MS, RateLimiter, type RateLimitedClient } from "../../src/api/rate-limit";
import { loadConfig } from "../../src/config/config";
import { createLogger } from "../../src/log";
import { createRedisClient } from "../../src/redis/redis-client";
import { ensureRedisServer, type RedisServerHandle } from "../../src/redis/redis-server";
import { freePort } from "../helpers/ports";

describe("the API's rate limit on a real Redis", () => {
  let home: string;
  let server: RedisServerHandle;
  let redis: Redis;

  beforeAll(async () => {
    home = await mkdtemp(path.join(os.tmpdir(), "rate-limit-"));
    const port = await freePort();
    const password = "rate-limit-test-password";
    server = await ensureRedisServer({
      home,
      host: "127.0.0.1",
      port,
      password,
      bin: loadConfig({}).redisServerBin,
      startTimeoutMs: 10000,
      logger: createLogger({ level: "silent" }),
    });
    redis = createRedisClient({ host: "127.0.0.1", port, password }, { name: "rate-limit-test" });
    // The service's client has no offline queue: wait until it is connected.
    if (redis.status !== "ready") await new Promise((resolve) => redis.once("ready", resolve));
  });

  afterAll(async () => {
    redis.disconnect();
    await server.stop();
    await rm(home, { recursive: true, force: true });
  });

  const limiter = (prefix: string, options: { perSecond: number; burst: number }) =>
    new RateLimiter(redis, `test:${prefix}`, options, createLogger({ level: "silent" }));
  const client = (id: string): RateLimitedClient => ({ kind: "address", id });

  test("a frozen Redis (connected, silent) does not hang the API: the take answers allowed within its bound", async () => {
    const rateLimiter = limiter("frozen", { perSecond: 0.001, burst: 1 });
    expect(await rateLimiter.take(client("a"))).toEqual({ phase: "allowed" });
    expect(await rateLimiter.take(client("a"))).toMatchObject({ phase: "limited" }); // Redis is consulted
    const pid = Number((await readFile(path.join(home, "redis", "redis.pid"), "utf8")).trim());
    process.kill(pid, "SIGSTOP");
    try {
      const started = performance.now();
      const verdict = await Promise.race([rateLimiter.take(client("a")), sleep(3000, "no answer in 3 s", { ref: false })]);
      const elapsedMs = performance.now() - started;
      expect(verdict).toEqual({ phase: "allowed" });
      // The bound is the point of the test: an operation waits RATE_LIMIT_WAIT_MS, plus scheduling noise.
      expect(elapsedMs).toBeLessThan(RATE_LIMIT_WAIT_MS + 1000);
    } finally {
      process.kill(pid, "SIGCONT");
    }
  });
});
