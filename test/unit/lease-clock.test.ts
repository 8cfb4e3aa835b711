import { expect } from "@jest/globals";
import Redis from "ioredis";
import { createServer, type AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { StaleWriterError } from "../../src/failover/cluster-state";
import { OperationJournal, RunningOperation, type JournalEntry } from "../../src/failover/operation-journal";
import { createLogger } from "../../src/log";
import { laterInstant, leaseInstantNow, leaseLapsed, RedisLease } from "../../src/redis/redis-lease";
import { ensureRedisServer, type RedisServerHandle } from "../../src/redis/redis-server";
import { loadConfig } from "../../src/config/config";
import { mkdtemp, readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { freePort } from "../helpers/ports";
import { testRedisTls } from "../helpers/tls";
import { connectionOptions } from "../../src/redis/redis-client";

/**
 * A lease (the failover monitor's, the archiver's, an operation's lock) is
 * held for a time to live from when Redis last confirmed it, and may have
 * lapsed once either clock says so: the monotonic one, so a wall clock
 * stepped back by NTP, an operator or a resumed virtual machine does not keep
 * a lease held after Redis let it go; and the wall clock, by which Redis
 * expires the key, so a step forward (Redis drops the key at once) stops the
 * holder at once too.
 */
describe("leases on both clocks", () => {
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

  test("held until a time to live after the last confirmed request was sent, on either clock; lapsed from then (pure)", () => {
    const sent = { monotonicMs: 1000, wallMs: 1_000_000 };
    const after = (monotonicMs: number, wallMs: number): boolean =>
      leaseLapsed({ confirmedSentAt: sent, now: { monotonicMs: 1000 + monotonicMs, wallMs: 1_000_000 + wallMs }, ttlMs: 5000 });
    expect(after(0, 0)).toBe(false);
    expect(after(4999, 4999)).toBe(false);
    expect(after(5000, 5000)).toBe(true);
    // The wall clock stepped forward an hour: Redis (on this host's clock) expired the key already.
    expect(after(10, 3_600_010)).toBe(true);
    // Stepped back an hour: held while the monotonic clock says so, lapsed once it does not.
    expect(after(4999, -3_595_001)).toBe(false);
    expect(after(5000, -3_595_000)).toBe(true);
    // Of two confirmed sends, the later by the monotonic clock counts, whatever the wall clock did in between.
    const stepped = { monotonicMs: 2000, wallMs: 1000 };
    expect(laterInstant(sent, stepped)).toBe(stepped);
    expect(laterInstant(stepped, sent)).toBe(stepped);
  });

  describe("an operation's lock while Redis cannot be reached and the wall clock steps", () => {
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
        leaseInstantNow(),
      );
      operations.push(operation);
      return operation;
    };

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
        tls: await testRedisTls(),
      });
      client = new Redis(connectionOptions({ host: "127.0.0.1", port, password, tls: (await testRedisTls()).client }));
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

    test("the wall clock stepped forward an hour: the lease is not current at once (Redis expired it by that clock)", async () => {
      const lease = new RedisLease(client, "test:lease:forward", 30_000);
      expect(await lease.tryAcquire()).not.toBeNull();
      jest.setSystemTime(Date.now() + 3_600_000);
      try {
        expect(lease.current).toBeNull();
      } finally {
        jest.setSystemTime(Date.now() - 3_600_000);
        await lease.release();
      }
    });

    test("the wall clock stepped forward an hour: Redis drops the operation lock, another adopts it, this holder stops at once", async () => {
      const keys = { lock: "test:forward:lock", entry: "test:forward:entry", fencing: "test:forward:fencing" };
      const silent = createLogger({ level: "silent" });
      // A time to live far longer than the test: no renewal runs before the holder must have stopped.
      const mine = await new OperationJournal(client, keys, 30_000, "me", silent).begin(entry);
      const theirs = new OperationJournal(client, keys, 30_000, "other", silent);
      try {
        expect(await theirs.adoptAbandoned()).toBeNull();
        jest.setSystemTime(Date.now() + 3_600_000);
        // This Redis runs on the real clock, so its expiry by the stepped one is modelled: the key is gone.
        await client.del(keys.lock);
        const adopted = await theirs.adoptAbandoned();
        expect(adopted?.entry.id).toBe(entry.id);
        adopted?.abandon();
        expect(() => mine.assertHeld()).toThrow(StaleWriterError);
      } finally {
        jest.setSystemTime(Date.now() - 3_600_000);
        mine.abandon();
        await client.del(keys.lock, keys.entry);
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
