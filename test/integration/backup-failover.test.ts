import type { NodeRef } from "../../src/nodes/node-driver";
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

  test("a backup before a switchover restores to a restore point on the new timeline; the archive has no gap", async () => {
    await sql(node1(), "CREATE TABLE story (id int PRIMARY KEY, chapter text)");
    const backup = await (await cluster.service.backups.start("full")).done;
    expect(backup.timeline).toBe(1);
    await sql(node1(), "INSERT INTO story VALUES (1, 'on timeline 1, after the backup')");
    // A switchover: the old primary stops cleanly, the replica has everything, then it is promoted.
    await cluster.service.failover.switchover("node2");
    const promoted = await eventually(async () => {
      const snapshot = await cluster.service.collector.pollNow();
      return snapshot.primary === "node2" ? snapshot : undefined;
    });
    expect(promoted.nodes.find((n) => n.name === "node2")?.timeline).toBe(2);

    await sql(node2(), "INSERT INTO story VALUES (2, 'on timeline 2')");
    await sql(node2(), "SELECT pg_create_restore_point('after-failover')");
    await sql(node2(), "INSERT INTO story VALUES (3, 'after the restore point')");
    const switched = (await sql<{ lsn: string }>(node2(), "SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn;
    await cluster.service.archiver.waitForArchived(2, switched, switched, 90000);

    const window = await cluster.service.backups.recoveryWindow();
    expect(window.gaps).toEqual([]);
    expect(window.latest?.timeline).toBe(2);
    const { readdir } = await import("node:fs/promises");
    expect(await readdir(cluster.service.repository.walDir)).toContain("00000002.history");

    copy = { name: "after-failover", host: "127.0.0.1", port: await freePort() };
    await cluster.service.backups.restore({ backupId: backup.id, target: copy, recoveryTarget: { kind: "name", name: "after-failover" } });
    expect(await sql(copy, "SELECT id FROM story ORDER BY id")).toEqual([{ id: 1 }, { id: 2 }]);
  });
});
