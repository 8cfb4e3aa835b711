import { createPubSub } from "@graphql-yoga/subscription";
import type Redis from "ioredis";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { RefusalCounter } from "../../src/api/refusal-counter";
import { maxPendingSockets, upgradeVerdict } from "../../src/api/socket-admission";
import { loadConfig } from "../../src/config/config";
import { EventLog, decode } from "../../src/events/event-log";
import type { ClusterEvent } from "../../src/events/event-map";
import { createLogger } from "../../src/log";
import { redisKeys } from "../../src/redis/keys";
import { createRedisClient } from "../../src/redis/redis-client";
import { ensureRedisServer, type RedisServerHandle } from "../../src/redis/redis-server";
import { eventually } from "../helpers/service";
import { freePort } from "../helpers/ports";
import { testRedisTls } from "../helpers/tls";

describe("socket admission before the handshake", () => {
  const limits = { maxSockets: 8, maxSocketsPerToken: 2, maxPendingPerAddress: 2, maxPending: 3, maxOperationsPerSocket: 5 };

  test("the API's bound and its share for sockets without a token are a 503, an address's a 429, in that order", () => {
    expect(upgradeVerdict(limits, { open: 2, pending: 1, pendingOfAddress: 1 })).toEqual({ phase: "admitted" });
    expect(upgradeVerdict(limits, { open: 8, pending: 0, pendingOfAddress: 0 })).toMatchObject({ phase: "refused", status: 503 });
    expect(upgradeVerdict(limits, { open: 4, pending: 3, pendingOfAddress: 0 })).toMatchObject({ phase: "refused", status: 503 });
    expect(upgradeVerdict(limits, { open: 4, pending: 2, pendingOfAddress: 2 })).toMatchObject({ phase: "refused", status: 429 });
    expect(upgradeVerdict(limits, { open: 8, pending: 3, pendingOfAddress: 2 })).toMatchObject({ phase: "refused", status: 503 });
    expect([maxPendingSockets(1000), maxPendingSockets(3), maxPendingSockets(1)]).toEqual([250, 1, 1]);
  });
});

describe("refusals counted, and the API's events under a Redis outage, on a real Redis", () => {
  let home: string;
  let port: number;
  let server: RedisServerHandle;
  let redis: Redis;
  const password = "api-refusals-test-password";
  const logger = createLogger({ level: "silent" });
  const keys = redisKeys("refusals");

  const startRedis = async () =>
    ensureRedisServer({
      home,
      host: "127.0.0.1",
      port,
      password,
      bin: loadConfig({}).redisServerBin,
      startTimeoutMs: 10000,
      logger,
      tls: await testRedisTls(),
    });

  beforeAll(async () => {
    home = await mkdtemp(path.join(os.tmpdir(), "api-refusals-"));
    port = await freePort();
    server = await startRedis();
    redis = createRedisClient({ host: "127.0.0.1", port, password, tls: (await testRedisTls()).client }, { name: "api-refusals-test" });
    if (redis.status !== "ready") await new Promise((resolve) => redis.once("ready", resolve));
  });

  afterAll(async () => {
    redis.disconnect();
    await server.stop();
    await rm(home, { recursive: true, force: true });
  });

  const newEventLog = () => new EventLog(redis, keys, createPubSub(), 100000, logger);
  const eventsSince = async (since: number): Promise<ClusterEvent[]> =>
    ((await redis.xrange(keys.events, `${since}-0`, "+")) as Array<[string, string[]]>).map(([id, fields]) => decode(id, fields)!);

  test("past its bound of parties a window counts the others together, exactly; each party's first is reported at once", async () => {
    const started = Date.now();
    const counter = new RefusalCounter(newEventLog(), 60_000, { tokens: 1, addresses: 3 });
    const addresses = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"];
    for (const address of addresses) counter.count({ kind: "address", address }, ["UNAUTHENTICATED"]);
    for (const address of addresses) counter.count({ kind: "address", address }, ["TOKEN_EXPIRED"]);
    // Tokens have a bound of their own: the first is named though the addresses' bound is reached; the second is not.
    counter.count({ kind: "token", identity: { id: "0123456789ab", role: "viewer" } }, ["FORBIDDEN"]);
    counter.count({ kind: "token", identity: { id: "ba9876543210", role: "viewer" } }, ["FORBIDDEN"]);
    const firsts = await eventually(async () => {
      const found = await eventsSince(started);
      return found.length === 5 ? found : undefined;
    });
    expect(firsts.map((event) => (event.data as { address?: string }).address ?? event.actor?.id ?? "others")).toEqual([
      "10.0.0.1",
      "10.0.0.2",
      "10.0.0.3",
      "others",
      "0123456789ab",
    ]);
    await counter.flush();
    const all = await eventsSince(started);
    const counted = (party: string) =>
      all
        .filter((event) => ((event.data as { address?: string }).address ?? event.actor?.id ?? "others") === party)
        .reduce((sum, event) => sum + (event.data as { count: number }).count, 0);
    // The others: two refusals of each of two addresses past the bound, and the second token's one.
    expect(["10.0.0.1", "10.0.0.2", "10.0.0.3", "0123456789ab", "others"].map(counted)).toEqual([2, 2, 2, 1, 5]);
    expect(all.length).toBeLessThanOrEqual(10);
    const others = all.filter((event) => (event.data as { others?: boolean }).others);
    expect(others.every((event) => event.actor === null && !event.message.includes("10.0.0.4"))).toBe(true);
    expect([...new Set(others.flatMap((event) => (event.data as { codes: string[] }).codes))].sort()).toEqual([
      "FORBIDDEN",
      "TOKEN_EXPIRED",
      "UNAUTHENTICATED",
    ]);
  });

  test("a full buffer during an outage drops the API's events first, never a node's, and appends the rest after", async () => {
    const events = newEventLog();
    await server.stop();
    await eventually(() => (redis.status !== "ready" ? true : undefined));
    const started = Date.now();
    const nodeDown = () =>
      events.emit({ kind: "node:down", severity: "critical", node: "node1", message: "node1 is down", data: { error: "refused" } });
    const refused = () =>
      events.emit({
        kind: "api:refused",
        severity: "warning",
        node: null,
        message: "address 10.0.0.9, no accepted token: a request refused (UNAUTHENTICATED)",
        data: { count: 1, codes: ["UNAUTHENTICATED"], first: true, windowMs: 60000, address: "10.0.0.9" },
      });
    await nodeDown();
    for (let i = 0; i < 10_000; i += 1) await refused();
    await nodeDown();
    expect(events.bufferedCount).toBe(10_000);
    server = await startRedis();
    await eventually(() => (events.bufferedCount === 0 ? true : undefined), { what: "the buffer appended", timeoutMs: 60_000 });
    const appended = await eventsSince(started);
    expect(appended.filter((event) => event.kind === "node:down")).toHaveLength(2);
    expect(appended.filter((event) => event.kind === "api:refused")).toHaveLength(9_998);
  }, 90_000);
});
