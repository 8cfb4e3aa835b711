import { randomUUID } from "node:crypto";
import { expect } from "@jest/globals";
import { trimConsolidated } from "../../src/events/consolidator";
import { pruneEvents } from "../../src/events/event-retention";
import type { FailoverRecord } from "../../src/events/event-map";
import { CONSOLIDATOR_GROUP } from "../../src/redis/keys";
import { PRUNE_EVENTS_JOB } from "../../src/service/scheduler";
import { graphqlRequest } from "../helpers/graphql-client";
import { eventually, useTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";

describe("events: Redis first, consolidated into the primary exactly once", () => {
  // The smallest stream bound: the outage test outgrows it. A quick scheduler poll: the retention job runs at once.
  const cluster = useTestCluster("events", { eventsMaxLength: 1000, schedulerPollMs: 500 });

  const primary = () => cluster.service.nodes[0]!;
  const eventRows = (where = "true") =>
    sqlOn<{ id: string; kind: string; n: string }>(
      primary(),
      cluster.service.secrets,
      `SELECT id, kind, count(*) OVER (PARTITION BY id) AS n FROM events WHERE ${where}`,
      [],
      "relevo",
    );

  /**
   * The consolidator has read the whole stream and acknowledged all it read:
   * its group's last delivered entry is the stream's last, and nothing is
   * pending. A replay is finished then, whatever it wrote.
   */
  const consolidatorCaughtUp = async (): Promise<boolean> => {
    const { redis, keys } = cluster.service;
    const stream = fieldsOf((await redis.xinfo("STREAM", keys.events)) as unknown[]);
    const groups = ((await redis.xinfo("GROUPS", keys.events)) as unknown[][]).map(fieldsOf);
    const group = groups.find((entry) => entry.name === CONSOLIDATOR_GROUP);
    return group !== undefined && group["last-delivered-id"] === stream["last-generated-id"] && Number(group.pending) === 0;
  };

  /** A consolidated event row that occurred `ageMs` ago, as the consolidator would have written it. */
  const insertEvent = (id: string, ageMs: number) =>
    sqlOn(
      primary(),
      cluster.service.secrets,
      `INSERT INTO events (id, stream_id, kind, severity, message, occurred_at) VALUES ($1, $2, 'node:up', 'info', 'retention test', $3)`,
      [id, `0-${randomUUID()}`, new Date(Date.now() - ageMs)],
      "relevo",
    );

  const failovers = async () => {
    const response = await graphqlRequest<{ failovers: Array<{ id: string; kind: string; from: string; to: string | null }> }>(
      cluster.url,
      "{ failovers(limit: 5) { id kind from to } }",
      { token: cluster.token("viewer") },
    );
    expect(response.errors).toBeUndefined();
    return response.data!.failovers;
  };

  test("migrations are recorded in _prisma_migrations the way prisma migrate deploy records them", async () => {
    await eventually(async () => ((await eventRows()).length > 0 ? true : undefined));
    const rows = await sqlOn<{ migration_name: string; applied_steps_count: number; finished: boolean; checksum: string }>(
      primary(),
      cluster.service.secrets,
      `SELECT migration_name, applied_steps_count, finished_at IS NOT NULL AS finished, checksum FROM _prisma_migrations ORDER BY migration_name`,
      [],
      "relevo",
    );
    const applied = (name: string) => ({
      migration_name: name,
      applied_steps_count: 1,
      finished: true,
      checksum: expect.stringMatching(/^[0-9a-f]{64}$/),
    });
    expect(rows).toEqual([
      applied("20261125000000_events"),
      applied("20261125010000_backups"),
      applied("20261126000000_failovers"),
      applied("20261206000000_events_occurred_at"),
    ]);
  });

  test("events emitted while the primary is down wait in Redis and land once it is back, each exactly once", async () => {
    await eventually(async () => ((await eventRows("kind = 'service:started'")).length === 1 ? true : undefined), {
      what: "start event consolidated",
    });
    await cluster.service.collector.stop(); // keep the topology poller from reacting to the outage on its own
    await cluster.service.failover.setMaintenance(true); // an outage to wait out, not to fail over
    await cluster.service.driver.stop(primary(), { mode: "fast", timeoutMs: 30000 });
    const emitted: string[] = [];
    for (let i = 0; i < 25; i += 1) {
      const event = await cluster.service.events.emit({
        kind: "node:down",
        severity: "warning",
        node: "node1",
        message: `outage test event ${i}`,
        data: { error: `test ${i}` },
      });
      emitted.push(event!.id);
    }
    // A burst past the stream's bound (1000) while nothing can be consolidated: trimming must not evict
    // the outage events above, which PostgreSQL does not have yet (MAXLEN ~ at 1000 would drop the
    // stream's first two nodes of 100 entries, the outage events among them). Sent at once: pipelined.
    await Promise.all(
      Array.from({ length: 1200 }, (_, i) =>
        cluster.service.events.emit({ kind: "node:up", severity: "info", node: "node2", message: `burst ${i}`, data: {} }),
      ),
    );
    // A switchover that finished while the primary was down: its record is in the stream only.
    const switchover = finishedSwitchover(new Date(Date.now() - 60000));
    await cluster.service.events.emit({
      kind: "failover:completed",
      severity: "info",
      node: "node2",
      message: "outage test switchover completed",
      data: switchover,
    });
    // The consolidator has tried and failed: the entries are pending, not acknowledged.
    await new Promise((resolve) => setTimeout(resolve, 2500));
    const pending = (await cluster.service.redis.xpending(cluster.service.keys.events, "consolidator")) as [number, ...unknown[]];
    expect(Number(pending[0])).toBeGreaterThanOrEqual(1);
    // The failovers query lists what PostgreSQL does not have yet, from the stream.
    expect(await failovers()).toEqual([{ id: switchover.id, kind: "SWITCHOVER", from: "node1", to: "node2" }]);

    await cluster.service.driver.start(primary(), { timeoutMs: 60000 });
    await cluster.service.failover.setMaintenance(false);
    const rows = await eventually(
      async () => {
        const found = await eventRows(`message LIKE 'outage test event %'`);
        return found.length === emitted.length ? found : undefined;
      },
      { what: "all outage events consolidated" },
    );
    expect(new Set(rows.map((r) => r.id))).toEqual(new Set(emitted));
    expect(rows.every((r) => Number(r.n) === 1)).toBe(true);
    await eventually(
      async () => {
        const after = (await cluster.service.redis.xpending(cluster.service.keys.events, "consolidator")) as [number, ...unknown[]];
        return Number(after[0]) === 0 ? true : undefined;
      },
      { what: "nothing pending" },
    );
    // Consolidated, the stream is trimmed back to its bound (MAXLEN ~: within a stream node of 100 entries).
    await eventually(async () => ((await cluster.service.redis.xlen(cluster.service.keys.events)) <= 1100 ? true : undefined), {
      what: "the stream trimmed to RELEVO_EVENTS_MAX_LENGTH once consolidated",
    });
    // Consolidated, the record is listed once; an older one that only PostgreSQL still has (its events
    // trimmed from the stream long ago) is merged in, newest first.
    await eventually(
      async () => {
        const rows = await sqlOn(primary(), cluster.service.secrets, "SELECT id FROM failovers WHERE id = $1", [switchover.id], "relevo");
        return rows.length === 1 ? true : undefined;
      },
      { what: "the switchover's record consolidated" },
    );
    const older = finishedSwitchover(new Date(Date.now() - 3600000));
    await sqlOn(
      primary(),
      cluster.service.secrets,
      `INSERT INTO failovers (id, kind, trigger, from_node, to_node, status, reason, started_at, finished_at)
       VALUES ($1, 'switchover', 'manual', 'node2', 'node1', 'completed', 'older', $2, $2)`,
      [older.id, older.startedAt],
      "relevo",
    );
    expect(await failovers()).toEqual([
      { id: switchover.id, kind: "SWITCHOVER", from: "node1", to: "node2" },
      { id: older.id, kind: "SWITCHOVER", from: "node2", to: "node1" },
    ]);

    // A replay of the whole stream (e.g. a new consumer group after a crash) writes nothing twice.
    await cluster.service.redis.xgroup("SETID", cluster.service.keys.events, "consolidator", "0");
    await eventually(async () => ((await consolidatorCaughtUp()) ? true : undefined), {
      what: "the replay read and acknowledged to the end of the stream",
    });
    const again = await eventRows(`message LIKE 'outage test event %'`);
    expect(again).toHaveLength(emitted.length);
    const total = await sqlOn<{ c: string }>(
      primary(),
      cluster.service.secrets,
      "SELECT count(*) AS c, count(DISTINCT stream_id) AS d FROM events",
      [],
      "relevo",
    );
    expect(total[0]).toEqual({ c: expect.any(String), d: total[0]!.c });
    cluster.service.collector.start();
  });

  test("the stream is trimmed only when every entry in it was delivered to the group and acknowledged", async () => {
    const { redis } = cluster.service;
    const stream = `relevo-test:trim:${randomUUID()}`;
    const trim = () => trimConsolidated(redis, { stream, group: CONSOLIDATOR_GROUP, keepLength: 100 });
    const append = async (count: number) => {
      const pipeline = redis.pipeline();
      for (let i = 0; i < count; i += 1) pipeline.xadd(stream, "*", "n", String(i));
      await pipeline.exec();
    };
    const readAll = async () => {
      const reply = (await redis.call("XREADGROUP", "GROUP", CONSOLIDATOR_GROUP, "test", "COUNT", 1000, "STREAMS", stream, ">")) as Array<
        [string, Array<[string, string[]]>]
      >;
      return reply[0]![1].map(([id]) => id);
    };
    try {
      await redis.xgroup("CREATE", stream, CONSOLIDATOR_GROUP, "0", "MKSTREAM");
      await append(300);
      await redis.xack(stream, CONSOLIDATOR_GROUP, ...(await readAll()));
      // A burst larger than the bound arrives after the read (during the PostgreSQL write): not
      // delivered, so not pending either — XPENDING alone would have let MAXLEN drop its oldest.
      await append(300);
      expect(Number(((await redis.xpending(stream, CONSOLIDATOR_GROUP)) as [number])[0])).toBe(0);
      expect(await trim()).toBeNull();
      expect(await redis.xlen(stream)).toBe(600);
      const delivered = await readAll(); // delivered, not yet acknowledged
      expect(await trim()).toBeNull();
      await redis.xack(stream, CONSOLIDATOR_GROUP, ...delivered);
      expect(await trim()).toBeGreaterThan(0);
      const kept = await redis.xlen(stream);
      expect(kept >= 100 && kept < 300).toBe(true); // MAXLEN ~: within a stream node of 100 entries
      expect((await redis.xrevrange(stream, "+", "-", "COUNT", 1))[0]![0]).toBe(delivered.at(-1));
    } finally {
      await redis.del(stream);
    }
  });

  test("the events table keeps RELEVO_EVENTS_RETENTION (30d): the scheduled prune-events job deletes older rows only", async () => {
    const day = 86_400_000;
    const [old, older, recent] = [randomUUID(), randomUUID(), randomUUID()];
    await insertEvent(old, 31 * day);
    await insertEvent(older, 400 * day);
    await insertEvent(recent, 29 * day);
    await cluster.service.scheduler.runHousekeepingNow(PRUNE_EVENTS_JOB);
    const left = await eventually(
      async () => {
        const rows = await eventRows(`id IN ('${old}', '${older}', '${recent}')`);
        return rows.length === 1 ? rows : undefined;
      },
      { what: "old events pruned" },
    );
    expect(left.map((row) => row.id)).toEqual([recent]);
    expect((await eventRows("kind = 'service:started'")).length).toBe(1); // today's events stay
  });

  test("a wall clock stepped 400 days forward prunes no more than the retention before the newest event (review 13, L9)", async () => {
    await eventually(async () => ((await eventRows("kind = 'service:started'")).length === 1 ? true : undefined), {
      what: "today's start event consolidated (the newest event)",
    });
    const day = 86_400_000;
    const [old, recent] = [randomUUID(), randomUUID()];
    await insertEvent(old, 31 * day);
    await insertEvent(recent, 29 * day);
    const { deleted, cutoff } = await pruneEvents(cluster.service.database, {
      now: new Date(Date.now() + 400 * day),
      retentionMs: 30 * day,
    });
    // Only the event past 30 days before the newest (today's) goes: the 29-day-old one and today's stay.
    expect(deleted).toBe(1);
    expect(cutoff!.getTime()).toBeLessThan(Date.now() - 29 * day);
    expect((await eventRows(`id IN ('${old}', '${recent}')`)).map((row) => row.id)).toEqual([recent]);
    expect((await eventRows("kind = 'service:started'")).length).toBe(1);
  });
});

/** XINFO's flat [field, value, field, value…] reply as an object. */
function fieldsOf(reply: unknown[]): Record<string, unknown> {
  const fields: Record<string, unknown> = {};
  for (let i = 0; i + 1 < reply.length; i += 2) fields[String(reply[i])] = reply[i + 1];
  return fields;
}

function finishedSwitchover(startedAt: Date): FailoverRecord {
  const finishedAt = new Date(startedAt.getTime() + 2000).toISOString();
  return {
    id: randomUUID(),
    kind: "switchover",
    trigger: "manual",
    from: "node1",
    to: "node2",
    status: "completed",
    reason: "events test",
    error: null,
    lostBytes: 0,
    startedAt: startedAt.toISOString(),
    fencedAt: null,
    promotedAt: finishedAt,
    finishedAt,
    durationMs: 2000,
  };
}
