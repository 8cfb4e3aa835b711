import { expect } from "@jest/globals";
import { eventually, useTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";

describe("events: Redis first, consolidated into the primary exactly once", () => {
  const cluster = useTestCluster("events");

  const primary = () => cluster.service.nodes[0]!;
  const eventRows = (where = "true") =>
    sqlOn<{ id: string; kind: string; n: string }>(
      primary(),
      cluster.service.secrets,
      `SELECT id, kind, count(*) OVER (PARTITION BY id) AS n FROM events WHERE ${where}`,
      [],
      "relevo",
    );

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
    expect(rows).toEqual([applied("20261125000000_events"), applied("20261125010000_backups"), applied("20261126000000_failovers")]);
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
    // The consolidator has tried and failed: the entries are pending, not acknowledged.
    await new Promise((resolve) => setTimeout(resolve, 2500));
    const pending = (await cluster.service.redis.xpending(cluster.service.keys.events, "consolidator")) as [number, ...unknown[]];
    expect(Number(pending[0])).toBeGreaterThanOrEqual(1);

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
    // A replay of the whole stream (e.g. a new consumer group after a crash) writes nothing twice.
    await cluster.service.redis.xgroup("SETID", cluster.service.keys.events, "consolidator", "0");
    await new Promise((resolve) => setTimeout(resolve, 2000));
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
});
