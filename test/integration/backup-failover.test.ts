import type { NodeRef } from "../../src/nodes/node-driver";
import { historyFileName, SEGMENT_SIZE, segmentName, segmentNumber } from "../../src/postgres/wal-names";
import { lsnToNumber } from "../../src/postgres/lsn";
import { serverHistory } from "../../src/postgres/timelines";
import { withNodeClient } from "../../src/postgres/connection";
import { CURRENT_TIMELINE_SQL } from "../../src/postgres/node-state";
import { superuserCredentials } from "../../src/cluster/bootstrap";
import { failoverHelpers } from "../helpers/failover";
import { freePort } from "../helpers/ports";
import { eventually, useTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";

describe("the WAL archive across a failover", () => {
  const cluster = useTestCluster("archive-failover");
  const [node1, node2] = [() => cluster.service.nodes[0]!, () => cluster.service.nodes[1]!];
  const sql = <T = Record<string, unknown>>(node: NodeRef, text: string) => sqlOn<T>(node, cluster.service.secrets, text);
  let copy: NodeRef | null = null;

  afterAll(async () => {
    if (copy) await cluster.service.driver.destroy(copy).catch(() => undefined);
  });

  test("a backup before a switchover restores to a restore point on the new timeline; the archive has no gap; recent events are written again on the new primary", async () => {
    await sql(node1(), "CREATE TABLE story (id int PRIMARY KEY, chapter text)");
    const backup = await (await cluster.service.backups.start("full")).done;
    expect(backup.timeline).toBe(1);
    await sql(node1(), "INSERT INTO story VALUES (1, 'on timeline 1, after the backup')");
    // Consolidated events the new primary will not have, as when an asynchronous primary dies before they reached
    // its replica: Redis acknowledged them, so only the replay of recent events on a new primary writes them again.
    const forgotten = (
      await sqlOn<{ id: string }>(
        node1(),
        cluster.service.secrets,
        "DELETE FROM events WHERE occurred_at > now() - interval '2 minutes' RETURNING id",
        [],
        "relevo",
      )
    ).map((row) => row.id);
    expect(forgotten.length).toBeGreaterThan(0);
    // A switchover: the old primary stops cleanly, the replica has everything, then it is promoted.
    await cluster.service.failover.switchover("node2");
    const promoted = await eventually(async () => {
      const snapshot = await cluster.service.collector.pollNow();
      return snapshot.primary === "node2" ? snapshot : undefined;
    });
    expect(promoted.nodes.find((n) => n.name === "node2")?.timeline).toBe(2);
    await eventually(
      async () => {
        const rows = await sqlOn(
          node2(),
          cluster.service.secrets,
          "SELECT id FROM events WHERE id = ANY($1::uuid[])",
          [forgotten],
          "relevo",
        );
        return rows.length === forgotten.length ? true : undefined;
      },
      { what: "the recent events written again on the new primary" },
    );

    await sql(node2(), "INSERT INTO story VALUES (2, 'on timeline 2')");
    await sql(node2(), "SELECT pg_create_restore_point('after-failover')");
    await sql(node2(), "INSERT INTO story VALUES (3, 'after the restore point')");
    const switched = (await sql<{ lsn: string }>(node2(), "SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn;
    await cluster.service.archiver.waitForArchived(2, switched, switched, 90000);

    const window = await cluster.service.backups.recoveryWindow();
    expect(window.gaps).toEqual([]);
    expect(window.latest?.timeline).toBe(2);
    const { readdir } = await import("node:fs/promises");
    const archived = await readdir(cluster.service.repository.spoolDir);
    expect(archived).toContain("00000002.history");
    // A span from before the branch (the backup's stop, in a segment timeline 2 does not have) to a point on
    // timeline 2 is archived along the history: what a restore test waits for when its reference point, taken
    // on a replica right after a failover, is still before the branch.
    expect(archived).not.toContain(segmentName(2, segmentNumber(backup.stopLsn!)));
    await cluster.service.archiver.waitForArchived(2, backup.stopLsn!, switched, 20000);

    copy = { name: "after-failover", host: "127.0.0.1", port: await freePort() };
    await cluster.service.backups.restore({ backupId: backup.id, target: copy, recoveryTarget: { kind: "name", name: "after-failover" } });
    expect(await sql(copy, "SELECT id FROM story ORDER BY id")).toEqual([{ id: 1 }, { id: 2 }]);
  });

  test("the primary killed right after a segment switch: the archive goes on, on the new timeline", async () => {
    const { node, state, primaryNow } = failoverHelpers(cluster);
    const old = node(await primaryNow());
    const survivor = cluster.service.nodes.find((n) => n.name !== old.name)!;
    await eventually(async () => ((await state()).eligible.includes(survivor.name) ? true : undefined), {
      what: `${survivor.name} eligible`,
      timeoutMs: 60000,
    });
    const oldTimeline = (await cluster.service.collector.pollNow()).nodes.find((n) => n.name === old.name)!.timeline!;
    await sql(old, "CREATE TABLE IF NOT EXISTS boundary (id int PRIMARY KEY)");
    await sql(old, "INSERT INTO boundary VALUES (1)");
    // The old primary's last record is a segment switch (as after a backup):
    // its timeline ends exactly on a segment boundary.
    const switched = (await sql<{ lsn: string }>(old, "SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn;
    await cluster.service.archiver.waitForArchived(oldTimeline, switched, switched, 30000);
    await eventually(
      async () =>
        (await sql<{ ok: boolean }>(survivor, `SELECT pg_last_wal_replay_lsn() >= '${switched}' AS ok`))[0]!.ok ? true : undefined,
      { what: `${survivor.name} replayed the switch` },
    );
    await cluster.service.driver.kill(old);
    await eventually(async () => ((await primaryNow()) === survivor.name ? true : undefined), { what: "failover", timeoutMs: 60000 });

    const history = await withNodeClient(survivor, superuserCredentials(cluster.service), 10000, async (client) => {
      const timeline = (await client.query<{ t: number }>(`SELECT ${CURRENT_TIMELINE_SQL} AS t`)).rows[0]!.t;
      return serverHistory(client, timeline);
    });
    const left = history.find((step) => step.timeline === oldTimeline)!;
    // The scenario's premise: the new timeline branched off exactly at a segment boundary.
    expect(lsnToNumber(left.switchLsn!) % SEGMENT_SIZE).toBe(0);
    const newTimeline = history[history.length - 1]!.timeline;
    expect(newTimeline).toBeGreaterThan(oldTimeline);

    await sql(survivor, "INSERT INTO boundary VALUES (2)");
    const after = (await sql<{ lsn: string }>(survivor, "SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn;
    await cluster.service.archiver.waitForArchived(newTimeline, after, after, 30000);
    expect((await cluster.service.backups.recoveryWindow()).gaps).toEqual([]);
    const { readdir } = await import("node:fs/promises");
    expect(await readdir(cluster.service.repository.spoolDir)).toContain(historyFileName(newTimeline));
  });
});
