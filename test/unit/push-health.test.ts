import type { EventDraft } from "../../src/events/event-map";
import { createLogger } from "../../src/log";
import { useTestRedis } from "../helpers/test-redis";
import { NO_STREAK, PushHealth, afterPushPass } from "../../src/wal/push-health";

const AFTER = 30_000;

describe("the pusher's failure streak (pure)", () => {
  test("a streak is reported once, after failing for the whole delay; the first push after it ends it", () => {
    let step = afterPushPass(NO_STREAK, { outcome: "failed", at: 1_000 }, AFTER);
    expect(step).toEqual({ streak: { failingSince: 1_000, reported: false }, event: null });
    step = afterPushPass(step.streak, { outcome: "failed", at: 30_999 }, AFTER);
    expect(step.event).toBeNull();
    step = afterPushPass(step.streak, { outcome: "failed", at: 31_000 }, AFTER);
    expect(step).toEqual({ streak: { failingSince: 1_000, reported: true }, event: "failing" });
    // Once per streak.
    step = afterPushPass(step.streak, { outcome: "failed", at: 90_000 }, AFTER);
    expect(step.event).toBeNull();
    step = afterPushPass(step.streak, { outcome: "pushed", at: 91_000 }, AFTER);
    expect(step).toEqual({ streak: NO_STREAK, event: "recovered" });
  });

  test("an idle pass (nothing to push) neither ends a streak nor starts one; a push before the delay ends it unreported", () => {
    // Segments slower than the delay: the idle passes between failures must not reset the streak's start.
    let step = afterPushPass(NO_STREAK, { outcome: "failed", at: 0 }, AFTER);
    step = afterPushPass(step.streak, { outcome: "idle", at: 20_000 }, AFTER);
    expect(step.streak.failingSince).toBe(0);
    step = afterPushPass(step.streak, { outcome: "failed", at: 40_000 }, AFTER);
    expect(step.event).toBe("failing");
    expect(afterPushPass(NO_STREAK, { outcome: "idle", at: 5 }, AFTER)).toEqual({ streak: NO_STREAK, event: null });
    const short = afterPushPass(NO_STREAK, { outcome: "failed", at: 0 }, AFTER).streak;
    expect(afterPushPass(short, { outcome: "pushed", at: 10_000 }, AFTER)).toEqual({ streak: NO_STREAK, event: null });
  });
});

describe("PushHealth on a real Redis", () => {
  const testRedis = useTestRedis("push-health");

  test("emits archive:push-failing and archive:push-recovered; every instance reads the reason and the lag meanwhile; logs without flooding", async () => {
    const emitted: EventDraft[] = [];
    const lines: string[] = [];
    let now = 0;
    const location = "s3://bucket/prefix/ at http://127.0.0.1:9";
    const store = { redis: testRedis.client(), key: "test:archive-push", index: 1 };
    const health = new PushHealth({
      repository: location,
      events: {
        emit: (draft) => {
          emitted.push(draft);
          return Promise.resolve(null);
        },
      },
      logger: createLogger({ level: "info", destination: { write: (line: string) => void lines.push(line) } }),
      store,
      now: () => now,
    });
    // Another instance: it only reads.
    const elsewhere = new PushHealth({
      repository: location,
      events: { emit: () => Promise.resolve(null) },
      logger: createLogger({ level: "silent" }),
      store,
    });
    const down = new Error("connect ECONNREFUSED 127.0.0.1:9");
    for (now = 0; now <= 40_000; now += 200) await health.observe({ error: down, pushed: 0, pending: 3 });
    expect(emitted.map((event) => [event.kind, event.severity])).toEqual([["archive:push-failing", "critical"]]);
    expect(emitted[0]!.data).toEqual({ repository: location, error: down.message, failingSince: new Date(0).toISOString() });
    const reasons = await elsewhere.healthReasons();
    expect(reasons).toHaveLength(1);
    expect(reasons[0]).toContain("ECONNREFUSED");
    expect(reasons[0]).toContain("s3://bucket/prefix/");
    expect(await elsewhere.status()).toMatchObject({
      reported: true,
      pendingFiles: 3,
      lastError: down.message,
      failingSince: new Date(0).toISOString(),
    });
    // 201 failed passes, one warning (the first; the next is due a minute later).
    expect(lines.filter((line) => line.includes("WAL not pushed")).length).toBe(1);
    now = 40_100;
    await health.observe({ error: null, pushed: 0, pending: 3 });
    expect(await elsewhere.healthReasons()).toHaveLength(1);
    await health.observe({ error: null, pushed: 3, pending: 0 });
    expect(await elsewhere.healthReasons()).toEqual([]);
    expect(await elsewhere.status()).toEqual({
      failingSince: null,
      reported: false,
      lastError: null,
      pendingFiles: 0,
      lastPushAt: new Date(40_100).toISOString(),
    });
    expect(emitted.map((event) => event.kind)).toEqual(["archive:push-failing", "archive:push-recovered"]);
    expect(emitted[1]!.data).toEqual({ repository: location, failedForMs: 40_100 });
  });

  test("an instance that takes over (a lease move, a restart) carries the stored streak on: no second alert, and its recovery is reported", async () => {
    const store = { redis: testRedis.client(), key: "test:archive-push-takeover", index: 1 };
    const location = "s3://bucket/takeover/";
    const emitted: EventDraft[] = [];
    let now = 0;
    const instance = () =>
      new PushHealth({
        repository: location,
        events: {
          emit: (draft) => {
            emitted.push(draft);
            return Promise.resolve(null);
          },
        },
        logger: createLogger({ level: "silent" }),
        store,
        now: () => now,
      });
    const first = instance();
    const down = new Error("connect ECONNREFUSED 127.0.0.1:9");
    for (now = 0; now <= 31_000; now += 1000) await first.observe({ error: down, pushed: 0, pending: 2 });
    expect(emitted.map((event) => event.kind)).toEqual(["archive:push-failing"]);
    // A restart while the store is still down: the streak goes on, not reported again, and health keeps naming it.
    const restarted = instance();
    for (now = 40_000; now <= 80_000; now += 1000) await restarted.observe({ error: down, pushed: 0, pending: 2 });
    expect(emitted.map((event) => event.kind)).toEqual(["archive:push-failing"]);
    expect(await restarted.healthReasons()).toHaveLength(1);
    expect((await restarted.status()).failingSince).toBe(new Date(0).toISOString());
    // The lease moves again; the new holder's idle passes say nothing, its first push ends the streak it took over.
    const moved = instance();
    now = 90_000;
    await moved.observe({ error: null, pushed: 0, pending: 0 });
    expect(await moved.healthReasons()).toHaveLength(1);
    now = 91_000;
    await moved.observe({ error: null, pushed: 2, pending: 0 });
    expect(emitted.map((event) => event.kind)).toEqual(["archive:push-failing", "archive:push-recovered"]);
    expect(emitted[1]!.data).toEqual({ repository: location, failedForMs: 91_000 });
    expect(await moved.healthReasons()).toEqual([]);
  });
});
