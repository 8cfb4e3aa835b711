import type { NodeRef } from "../../src/nodes/node-driver";
import { freePort } from "../helpers/ports";
import { useTestCluster } from "../helpers/service";
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
    await cluster.service.collector.pollNow();
    // Nothing else is written: only the primary's WAL switch (asked for by the backup) completes the last segment.
    const backup = await (await cluster.service.backups.start("full")).done;
    expect(backup).toMatchObject({ status: "completed", source: "node2" });
    expect(backup.backupLabel).toContain("BACKUP FROM: standby");
    copy = { name: "from-replica", host: "127.0.0.1", port: await freePort() };
    await cluster.service.backups.restore({ backupId: backup.id, target: copy, recoveryTarget: { kind: "immediate" } });
    expect(await sqlOn(copy, cluster.service.secrets, "SELECT count(*)::int AS n FROM spared")).toEqual([{ n: 10000 }]);
  });
});
