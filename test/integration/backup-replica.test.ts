import type { NodeRef } from "../../src/nodes/node-driver";
import { freePort } from "../helpers/ports";
import { eventually, useTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";

describe("backups from the replica (RELEVO_BACKUP_SOURCE=replica)", () => {
  const cluster = useTestCluster("backup-replica", { backupSource: "replica" });
  let copy: NodeRef | null = null;

  afterAll(async () => {
    if (copy) await cluster.service.driver.destroy(copy).catch(() => undefined);
  });

  test("the copy comes from the replica, completes on an idle primary, and restores the primary's data", async () => {
    const primary = cluster.service.nodes[0]!;
    await sqlOn(primary, cluster.service.secrets, "CREATE TABLE spared AS SELECT g AS id FROM generate_series(1, 10000) g");
    // A copy taken from the replica is as of what the replica has replayed: let it catch up first.
    await eventually(async () =>
      (await sqlOn(cluster.service.nodes[1]!, cluster.service.secrets, "SELECT to_regclass('spared') IS NOT NULL AS ok"))[0]?.ok
        ? true
        : undefined,
    );
    await cluster.service.collector.pollNow();
    // Nothing else is written: only the primary's WAL switch (asked for by the backup) completes the last segment.
    const backup = await (await cluster.service.backups.start("full")).done;
    expect(backup).toMatchObject({ status: "completed", source: "node2" });
    expect(backup.backupLabel).toContain("BACKUP FROM: standby");
    copy = { name: "from-replica", host: "127.0.0.1", port: await freePort() };
    await cluster.service.backups.restore({ backupId: backup.id, target: copy, recoveryTarget: { kind: "immediate" } });
    expect(await sqlOn(copy, cluster.service.secrets, "SELECT count(*)::int AS n FROM spared")).toEqual([{ n: 10000 }]);
  });

  test("an incremental from the replica stores the changed blocks and restores the primary's data", async () => {
    const [primary, replica] = cluster.service.nodes as [NodeRef, NodeRef];
    await sqlOn(primary, cluster.service.secrets, "INSERT INTO spared SELECT g FROM generate_series(10001, 15000) g");
    await sqlOn(
      primary,
      cluster.service.secrets,
      "CREATE TABLE later AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 30000) g",
    );
    // A copy taken from the replica is as of what the replica has replayed.
    await eventually(async () =>
      (await sqlOn<{ ok: boolean }>(replica, cluster.service.secrets, "SELECT to_regclass('later') IS NOT NULL AS ok"))[0]?.ok
        ? true
        : undefined,
    );
    const incremental = await (await cluster.service.backups.start("incremental")).done;
    expect(incremental).toMatchObject({ status: "completed", type: "incremental", source: "node2", changesFrom: "wal" });
    const full = await cluster.service.backups.get(incremental.reference!);
    expect(incremental.storedBytes).toBeLessThan(full.storedBytes);
    if (copy) await cluster.service.driver.destroy(copy);
    copy = { name: "from-replica-incremental", host: "127.0.0.1", port: await freePort() };
    await cluster.service.backups.restore({ backupId: incremental.id, target: copy, recoveryTarget: { kind: "immediate" } });
    expect(
      await sqlOn(
        copy,
        cluster.service.secrets,
        "SELECT (SELECT count(*)::int FROM spared) AS spared, (SELECT count(*)::int FROM later) AS later",
      ),
    ).toEqual([{ spared: 15000, later: 30000 }]);
  });

  test("a missing archived segment is a critical archive:gap event, reported once, and shows in the recovery window", async () => {
    const primary = cluster.service.nodes[0]!;
    const segments: string[] = [];
    for (let i = 0; i < 3; i += 1) {
      await sqlOn(primary, cluster.service.secrets, `INSERT INTO spared VALUES (${100000 + i})`);
      segments.push((await sqlOn<{ lsn: string }>(primary, cluster.service.secrets, "SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn);
    }
    const last = segments[segments.length - 1]!;
    await cluster.service.archiver.waitForArchived(1, segments[0]!, last, 60000);
    const { segmentName, segmentNumber } = await import("../../src/postgres/wal-names");
    const missing = segmentName(1, segmentNumber(segments[1]!));
    const { rm } = await import("node:fs/promises");
    await rm(`${cluster.service.repository.walDir}/${missing}`);

    await cluster.service.archiveMonitor.check();
    await cluster.service.archiveMonitor.check();
    const page = await cluster.service.events.page({ first: 10, kinds: ["archive:gap"] });
    expect(page.events).toHaveLength(1);
    expect(page.events[0]).toMatchObject({ kind: "archive:gap", severity: "critical", data: { timeline: 1, from: missing, to: missing } });
    expect((await cluster.service.backups.recoveryWindow()).gaps).toEqual([{ timeline: 1, from: missing, to: missing }]);
  });
});
