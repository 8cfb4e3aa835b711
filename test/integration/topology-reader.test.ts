import { redisKeys } from "../../src/redis/keys";
import { createLogger } from "../../src/log";
import { createRedisClient } from "../../src/redis/redis-client";
import { ensureRedisServer, type RedisServerHandle } from "../../src/redis/redis-server";
import { TopologyReader } from "../../src/cluster/topology-reader";
import type { ClusterSnapshot } from "../../src/cluster/topology";
import { tempHome } from "../helpers/home";
import { freePort } from "../helpers/ports";
import { eventually } from "../helpers/service";
import type Redis from "ioredis";

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
  let endpoint: { host: string; port: number; password: string };
  let writer: Redis;
  let commands: Redis;
  let invalidations: Redis;
  let reader: TopologyReader;

  beforeAll(async () => {
    endpoint = { host: "127.0.0.1", port: await freePort(), password: "reader-test-password-0123" };
    server = await ensureRedisServer({ home: await tempHome("reader"), ...endpoint, bin: "redis-server", startTimeoutMs: 30000, logger });
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

  test("repeated reads do not go to Redis; a write elsewhere is seen on the next read", async () => {
    expect((await reader.read())?.collectedAt).toBe("first");
    const before = Number(/total_commands_processed:(\d+)/.exec(await writer.info("stats"))![1]);
    for (let i = 0; i < 50; i += 1) expect((await reader.read())?.collectedAt).toBe("first");
    const after = Number(/total_commands_processed:(\d+)/.exec(await writer.info("stats"))![1]);
    expect(after - before).toBeLessThan(5); // the INFO calls themselves, not 50 GETs

    await writer.set(keys.topology, JSON.stringify(snapshot("second")));
    // The invalidation is pushed by Redis as part of the write; give the message its round trip.
    const seen = await eventually(
      async () => {
        const value = await reader.read();
        return value?.collectedAt === "second" ? value : undefined;
      },
      { timeoutMs: 2000 },
    );
    expect(seen.collectedAt).toBe("second");
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
    await eventually(async () => ((await reader.read()) && invalidations.status === "ready" ? true : undefined));
    await writer.set(keys.topology, JSON.stringify(snapshot("fifth")));
    const seen = await eventually(async () => ((await reader.read())?.collectedAt === "fifth" ? true : undefined), { timeoutMs: 3000 });
    expect(seen).toBe(true);
  });
});
