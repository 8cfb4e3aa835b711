import { expect } from "@jest/globals";
import Redis from "ioredis";
import { createServer, type AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { StaleWriterError } from "../../src/failover/cluster-state";
import { RunningOperation, type JournalEntry } from "../../src/failover/operation-journal";
import { createLogger } from "../../src/log";
import { leaseLapsed, RedisLease } from "../../src/redis/redis-lease";
import { ensureRedisServer, type RedisServerHandle } from "../../src/redis/redis-server";
import { loadConfig } from "../../src/config/config";
import { mkdtemp, readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { freePort } from "../helpers/ports";
import { monotonicNowMs } from "../../src/util/monotonic-clock";

/**
 * A lease (the failover monitor's, the archiver's, an operation's lock) is
 * held for a time to live from when Redis last confirmed it; whether it may
 * have lapsed is measured on the monotonic clock, so a wall clock stepped by
 * NTP, an operator or a resumed virtual machine neither keeps a lease held
 * after Redis let it go nor throws one away that is still ours.
 */
describe("leases on the monotonic clock", () => {
  // Only Date is faked, to step the wall clock: timers and performance.now() run for real.
  beforeAll(() => {
    jest.useFakeTimers({
      doNotFake: [
        "hrtime",
        "nextTick",
        "performance",
        "queueMicrotask",
        "setImmediate",
        "clearImmediate",
        "setInterval",
        "clearInterval",
        "setTimeout",
        "clearTimeout",
      ],
    });
  });
  afterAll(() => jest.useRealTimers());

  test("held until a time to live after the last confirmed request was sent; lapsed from then (pure)", () => {
    expect(leaseLapsed({ confirmedSentAtMs: 1000, nowMs: 1000, ttlMs: 5000 })).toBe(false);
    expect(leaseLapsed({ confirmedSentAtMs: 1000, nowMs: 5999, ttlMs: 5000 })).toBe(false);
    expect(leaseLapsed({ confirmedSentAtMs: 1000, nowMs: 6000, ttlMs: 5000 })).toBe(true);
  });

  describe("an operation's lock while Redis cannot be reached and the wall clock steps", () => {
    const entry: JournalEntry = {
      id: "op-1",
      kind: "failover",
      trigger: "automatic",
      from: "node1",
      to: null,
      force: false,
      reason: "a test",
      stage: "begun",
      startedAt: new Date().toISOString(),
      times: {},
      facts: {},
    };
    let redis: Redis;
    const operations: RunningOperation[] = [];

    beforeAll(async () => {
      // A port nobody listens on: every renewal fails at once, as with Redis down.
      const probe = createServer();
      await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
      const port = (probe.address() as AddressInfo).port;
      await new Promise<void>((resolve) => probe.close(() => resolve()));
      redis = new Redis({ host: "127.0.0.1", port, lazyConnect: true, enableOfflineQueue: false, retryStrategy: () => null });
      redis.on("error", () => undefined);
    });

    afterAll(() => {
      for (const operation of operations) operation.abandon();
      redis.disconnect();
    });

    const running = (ttlMs: number): RunningOperation => {
      const operation = new RunningOperation(
        redis,
        "test:lock",
        "test:entry",
        "me#1",
        ttlMs,
        entry,
        createLogger({ level: "silent" }),
        monotonicNowMs(),
      );
      operations.push(operation);
      return operation;
    };

    test("stepped forward an hour: the lock taken a moment ago is still held", () => {
      const operation = running(5000);
      jest.setSystemTime(Date.now() + 3_600_000);
      expect(() => operation.assertHeld()).not.toThrow();
    });

    test("stepped back an hour: no renewal for a time to live, and the lock is no longer held", async () => {
      const operation = running(300);
      jest.setSystemTime(Date.now() - 3_600_000);
      await sleep(400);
      expect(() => operation.assertHeld()).toThrow(StaleWriterError);
    });
  });

  describe("a lease on a real Redis", () => {
    let home: string;
    let server: RedisServerHandle;
    let client: Redis;
    const password = "lease-test-password";

    beforeAll(async () => {
      home = await mkdtemp(path.join(os.tmpdir(), "lease-clock-"));
      const port = await freePort();
      const config = loadConfig({});
      server = await ensureRedisServer({
        home,
        host: "127.0.0.1",
        port,
        password,
        bin: config.redisServerBin,
        startTimeoutMs: 10000,
        logger: createLogger({ level: "silent" }),
      });
      client = new Redis({ host: "127.0.0.1", port, password });
    });

    afterAll(async () => {
      client.disconnect();
      await server.stop();
    });

    test("renewals that go unanswered (Redis frozen) give the lease up after its time to live, though none failed", async () => {
      const lease = new RedisLease(client, "test:lease:frozen", 600);
      expect(await lease.tryAcquire()).not.toBeNull();
      let lost = 0;
      const stop = lease.keepAlive(createLogger({ level: "silent" }), () => (lost += 1));
      const pid = Number((await readFile(path.join(home, "redis", "redis.pid"), "utf8")).trim());
      process.kill(pid, "SIGSTOP");
      try {
        await sleep(1000);
        expect({ lost, current: lease.current }).toEqual({ lost: 1, current: null });
      } finally {
        process.kill(pid, "SIGCONT");
        stop();
      }
    });

    test("the wall clock stepped back an hour: an unrenewed lease is not current once its time to live passed", async () => {
      const lease = new RedisLease(client, "test:lease:stepped", 300);
      expect(await lease.tryAcquire()).not.toBeNull();
      jest.setSystemTime(Date.now() - 3_600_000);
      expect(lease.current).not.toBeNull();
      await sleep(400);
      expect(lease.current).toBeNull();
    });
  });
});
