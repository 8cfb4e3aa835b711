import type Redis from "ioredis";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import "reflect-metadata";
import { createPubSub } from "@graphql-yoga/subscription";
import { admitOperation } from "../../src/api/limits";
import { COST_PER_RATE_TOKEN, RATE_LIMIT_WAIT_MS, RateLimiter, rateTokensFor, type RateLimitedClient } from "../../src/api/rate-limit";
import { buildRelevoSchema } from "../../src/api/schema";
import { configKeys } from "../../src/config/config-keys";
import { createLogger } from "../../src/log";
import { useTestRedis } from "../helpers/test-redis";

describe("what an operation takes from its bucket: its cost", () => {
  test("one token per COST_PER_RATE_TOKEN of cost, at least one", () => {
    expect([0, 1, COST_PER_RATE_TOKEN, COST_PER_RATE_TOKEN + 1, 5000].map(rateTokensFor)).toEqual([
      1,
      1,
      1,
      2,
      Math.ceil(5000 / COST_PER_RATE_TOKEN),
    ]);
  });

  test("at the default limits a request of 90 filtered event scans takes 90 units or more; a topology query one", async () => {
    // Review 12: at one token per operation, 50 such requests a second (each decoding up to 50 000 stream entries)
    // kept the event loop busy; charged by cost, a token runs one every two seconds at the default 50 tokens/s.
    const schema = await buildRelevoSchema({ pubSub: createPubSub() });
    const limits = { maxDepth: Number(configKeys.apiMaxDepth.default), maxComplexity: Number(configKeys.apiMaxComplexity.default) };
    const tokensOf = (query: string): number => {
      const admission = admitOperation(schema, { query }, limits);
      if (admission.phase !== "admitted") throw new Error(`refused: ${admission.errors[0]?.message}`);
      return rateTokensFor(admission.cost);
    };
    const scans = Array.from({ length: 90 }, (_, i) => `a${i}: events(first: 1, kinds: ["archive:gap"]) { edges { cursor } }`);
    expect(tokensOf(`{ ${scans.join(" ")} }`)).toBeGreaterThanOrEqual(90);
    expect(tokensOf("{ cluster { name health primary { name } nodes { name role reachable } } }")).toBe(1);
  });
});

describe("the API's rate limit on a real Redis", () => {
  const testRedis = useTestRedis("rate-limit");
  let redis: Redis;
  beforeAll(() => {
    redis = testRedis.client();
  });

  const limiter = (prefix: string, options: { perSecond: number; burst: number }) =>
    new RateLimiter(redis, `test:${prefix}`, options, createLogger({ level: "silent" }));
  const client = (id: string): RateLimitedClient => ({ kind: "address", id });

  test("a take of several tokens takes all or none; more than the bucket holds takes a full bucket", async () => {
    const rateLimiter = limiter("weighted", { perSecond: 0.001, burst: 10 });
    const verdicts = [];
    for (const count of [6, 6, 4, 1]) verdicts.push((await rateLimiter.take(client("b"), count)).phase);
    expect(verdicts).toEqual(["allowed", "limited", "allowed", "limited"]);
    expect((await rateLimiter.take(client("c"), 1000)).phase).toBe("allowed");
    expect((await rateLimiter.take(client("c"), 1)).phase).toBe("limited");
  });

  test("a frozen Redis (connected, silent) does not hang the API: the take answers allowed within its bound", async () => {
    const rateLimiter = limiter("frozen", { perSecond: 0.001, burst: 1 });
    expect(await rateLimiter.take(client("a"))).toEqual({ phase: "allowed" });
    expect(await rateLimiter.take(client("a"))).toMatchObject({ phase: "limited" }); // Redis is consulted
    const pid = Number((await readFile(path.join(testRedis.home(), "redis", "redis.pid"), "utf8")).trim());
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
