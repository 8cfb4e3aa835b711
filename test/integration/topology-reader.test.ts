import { redisKeys } from "../../src/redis/keys";
import { createLogger } from "../../src/log";
import { createRedisClient, type RedisEndpoint } from "../../src/redis/redis-client";
import { ensureRedisServer, type RedisServerHandle } from "../../src/redis/redis-server";
import { TopologyReader } from "../../src/cluster/topology-reader";
import type { ClusterSnapshot } from "../../src/cluster/topology";
import { tempHome } from "../helpers/home";
import { freePort } from "../helpers/ports";
import { eventually } from "../helpers/service";
import type Redis from "ioredis";
import { testRedisTls } from "../helpers/tls";

const snapshot = (collectedAt: string): ClusterSnapshot => ({
  name: "t",
  primary: "node1",
  health: "healthy",
  healthReasons: [],
  nodes: [],
  collectedAt,
});

describe("topology reads: served locally between changes, never stale", () => {
  const logger = createLogger({ level: "silent" });
  const keys = redisKeys("reader");
  let server: RedisServerHandle;
  let endpoint: RedisEndpoint;
  let writer: Redis;
  let commands: Redis;
  let invalidations: Redis;
  let reader: TopologyReader;

  beforeAll(async () => {
    const tls = await testRedisTls();
    endpoint = { host: "127.0.0.1", port: await freePort(), password: "reader-test-password-0123", tls: tls.client };
    server = await ensureRedisServer({
      home: await tempHome("reader"),
      ...endpoint,
      bin: "redis-server",
      startTimeoutMs: 30000,
      logger,
      tls,
    });
    writer = createRedisClient(endpoint, { name: "writer" });
    commands = createRedisClient(endpoint, { name: "commands" });
    invalidations = createRedisClient(endpoint, { name: "invalidations", queueWhileOffline: true });
    await eventually(async () => ((await writer.ping().catch(() => null)) === "PONG" ? true : undefined));
    await writer.set(keys.topology, JSON.stringify(snapshot("first")));
    reader = new TopologyReader(commands, invalidations, keys, logger);
    await eventually(() => (commands.status === "ready" && invalidations.status === "ready" ? true : undefined));
    await reader.start();
  });

  afterAll(async () => {
    for (const client of [writer, commands, invalidations]) client.disconnect();
    await server.stop();
  });

  /** Commands Redis processed while `work` ran (the INFO calls themselves count 1 or 2). */
  const redisCommandsFor = async (work: () => Promise<unknown>): Promise<number> => {
    const processed = async () => Number(/total_commands_processed:(\d+)/.exec(await writer.info("stats"))![1]);
    const before = await processed();
    await work();
    return (await processed()) - before;
  };
  const readTimes = async (times: number, expected?: string) => {
    for (let i = 0; i < times; i += 1) {
      const value = await reader.read();
      if (expected !== undefined) expect(value?.collectedAt).toBe(expected);
    }
  };
  /**
   * Redis queues the invalidation on the tracking connection as part of the
   * write; a PING sent there afterwards is answered after it, so once the
   * reply is here the reader has had the invalidation. The read after that is
   * the "next read" the reader promises to be fresh (without it the cache
   * may serve the old value up to its 1 s maximum age).
   */
  const invalidationDelivered = async () => {
    await invalidations.ping();
  };

  test("repeated reads do not go to Redis; a write elsewhere is seen on the next read", async () => {
    expect((await reader.read())?.collectedAt).toBe("first");
    expect(await redisCommandsFor(() => readTimes(50, "first"))).toBeLessThan(5); // the INFO calls themselves, not 50 GETs

    await writer.set(keys.topology, JSON.stringify(snapshot("second")));
    await invalidationDelivered();
    expect((await reader.read())?.collectedAt).toBe("second");
  });

  test("when the tracking connection drops, reads go to Redis until tracking is back", async () => {
    const closed = new Promise((resolve) => invalidations.once("close", resolve));
    invalidations.disconnect(false);
    await closed;
    for (const value of ["third", "fourth"]) {
      await writer.set(keys.topology, JSON.stringify(snapshot(value)));
      expect((await reader.read())?.collectedAt).toBe(value);
    }
    await invalidations.connect();
    // Tracking is back: repeated reads are served locally again.
    await eventually(async () => ((await redisCommandsFor(() => readTimes(20))) < 5 ? true : undefined), {
      what: "reads served locally again",
      timeoutMs: 5000,
    });
    await writer.set(keys.topology, JSON.stringify(snapshot("fifth")));
    await invalidationDelivered();
    expect((await reader.read())?.collectedAt).toBe("fifth");
  });
});
