import { expect } from "@jest/globals";
import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import type { BackupManifest } from "../../src/backup/manifest";
import type { EventKind } from "../../src/events/event-map";
import type { NodeRef } from "../../src/nodes/node-driver";
import { bytesBehind } from "../../src/postgres/lsn";
import { SEGMENT_SIZE } from "../../src/postgres/wal-names";
import { projectRoot } from "../../src/util/project-root";
import { ArchiveGaps } from "../../src/wal/archive-gaps";
import { cliEnvFor } from "../helpers/cli-env";
import { freePort } from "../helpers/ports";
import { eventually, useTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";
import { archiveKey } from "../../src/repository/repository-layout";

const run = promisify(execFile);
/** How far the archive may trail here: small, so that three WAL switches (no data written) are past it. */
const ARCHIVE_MAX_LAG_BYTES = 1 << 20;

describe("backups from the replica (RELEVO_BACKUP_SOURCE=replica)", () => {
  const cluster = useTestCluster("backup-replica", { backupSource: "replica", archiveMaxLagBytes: ARCHIVE_MAX_LAG_BYTES });
  const sql = <T = Record<string, unknown>>(node: NodeRef, text: string) => sqlOn<T>(node, cluster.service.secrets, text);
  const eventsSince = async (kind: EventKind, since: number) =>
    (await cluster.service.events.page({ first: 50, kinds: [kind] })).events.filter((event) => Date.parse(event.occurredAt) >= since);
  /** Closes the current WAL segment; returns an LSN inside the segment just completed. */
  const switchWal = async (): Promise<string> =>
    (await sql<{ lsn: string }>(cluster.service.nodes[0]!, "SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn;
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
    // Lost from the repository's archive (and from what was received, or the pusher would put it again); the index,
    // rebuilt from a listing every few minutes, is rebuilt now.
    const { repository } = cluster.service;
    await rm(`${repository.spoolDir}/${missing}`, { force: true }); // the spool may have dropped it already (pushed)
    await repository.objects.store.delete([archiveKey(repository.generation, missing)]);
    await repository.archive.rebuild();

    await cluster.service.archiveMonitor.check();
    await cluster.service.archiveMonitor.check();
    const page = await cluster.service.events.page({ first: 10, kinds: ["archive:gap"] });
    expect(page.events).toHaveLength(1);
    expect(page.events[0]).toMatchObject({ kind: "archive:gap", severity: "critical", data: { timeline: 1, from: missing, to: missing } });
    expect((await cluster.service.backups.recoveryWindow()).gaps).toEqual([{ timeline: 1, from: missing, to: missing }]);

    // Review 10, finding 12: the gap is kept in Redis. Another instance (or this one restarted) knows it at once:
    // its health names it, and finding it again reports nothing.
    const { redis, keys, events } = cluster.service;
    const otherInstance = new ArchiveGaps(redis, keys.archiveGaps, events);
    const reason = `the WAL archive has a gap (${missing}): point-in-time recovery cannot cross it; take a full backup`;
    expect(await otherInstance.healthReasons()).toEqual([reason]);
    await otherInstance.report({ timeline: 1, from: missing, to: missing }, "");
    expect((await cluster.service.events.page({ first: 10, kinds: ["archive:gap"] })).events).toHaveLength(1);
    expect((await cluster.service.collector.pollNow()).healthReasons).toContain(reason);
    // A completed full backup started past it (as any instance's archive monitor settles it): no instance names it,
    // and the monitor, still seeing it in the recovery window (the older backups are kept), does not report it again.
    const pastTheGap = { status: "completed", type: "full", startLsn: segments[2]! } as BackupManifest;
    await otherInstance.settle([pastTheGap]);
    expect(await otherInstance.healthReasons()).toEqual([]);
    await cluster.service.archiveMonitor.check();
    expect((await cluster.service.collector.pollNow()).healthReasons).not.toContain(reason);
    expect((await cluster.service.events.page({ first: 10, kinds: ["archive:gap"] })).events).toHaveLength(1);
  });

  test("the archiver failing to stream is a critical archive:failing event, once; it streams again once it may", async () => {
    const primary = cluster.service.nodes[0]!;
    const archiver = cluster.service.archiver;
    const since = Date.now();
    // pg_receivewal logs in as the replication role; the replica's open stream is not touched.
    await sql(primary, "ALTER ROLE replicator NOLOGIN");
    try {
      // NOLOGIN leaves the archiver's open stream alone: restarted, pg_receivewal logs in again (and fails).
      await archiver.stop();
      archiver.start();
      const failing = await eventually(async () => (await eventsSince("archive:failing", since))[0], {
        what: "archive:failing",
        timeoutMs: 20000,
      });
      expect(failing).toMatchObject({
        severity: "critical",
        node: primary.name,
        data: { error: expect.stringContaining('role "replicator" is not permitted to log in') },
      });
      // Past its fourth and fifth failures (0.5 + 1 + 1.5 + 2 s after the start): still one event.
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, since + 6000 - Date.now())));
      expect(await eventsSince("archive:failing", since)).toHaveLength(1);
    } finally {
      await sql(primary, "ALTER ROLE replicator LOGIN");
    }
    const lsn = await switchWal();
    await archiver.waitForArchived(1, lsn, lsn, 30000);
  });

  test("an archive trailing the primary past RELEVO_ARCHIVE_MAX_LAG_BYTES is an archive:lagging warning, once until it caught up", async () => {
    const primary = cluster.service.nodes[0]!;
    const archiver = cluster.service.archiver;
    const monitor = cluster.service.archiveMonitor;
    /** The archive caught up with the primary, and the monitor has seen it so. */
    const caughtUp = async (): Promise<void> => {
      const lsn = await switchWal();
      await archiver.waitForArchived(1, lsn, lsn, 30000);
      await cluster.service.collector.pollNow();
      await monitor.check();
    };
    /** The archiver stopped while the primary closes three segments; the monitor looks twice. */
    const lagBehind = async (): Promise<void> => {
      await archiver.stop();
      for (let i = 0; i < 3; i += 1) {
        await sql(primary, "INSERT INTO lag_marks VALUES (1)");
        await switchWal();
      }
      await cluster.service.collector.pollNow();
      await monitor.check();
      await monitor.check();
      archiver.start();
    };
    await sql(primary, "CREATE TABLE lag_marks (n int)"); // something to write before each switch
    await caughtUp();
    // The lag is measured from the recovery window's end: there is one only from the first backup on (taken above).
    expect((await cluster.service.backups.recoveryWindow()).latest).not.toBeNull();
    const since = Date.now();
    await lagBehind();
    const lagging = await eventsSince("archive:lagging", since);
    expect(lagging).toHaveLength(1);
    expect(lagging[0]).toMatchObject({ severity: "warning", node: primary.name });
    expect((lagging[0]!.data as { lagBytes: number }).lagBytes).toBeGreaterThan(ARCHIVE_MAX_LAG_BYTES + SEGMENT_SIZE);
    // Caught up, then behind again: a second warning.
    await caughtUp();
    expect(await eventsSince("archive:lagging", since)).toHaveLength(1);
    await lagBehind();
    expect(await eventsSince("archive:lagging", since)).toHaveLength(2);
    await caughtUp();
  });

  test("an index corrupted behind valid page checksums: only the restore test's pg_amcheck finds it; relevo backup verify exits 0, with --restore-test non-zero", async () => {
    const [primary, replica] = cluster.service.nodes as [NodeRef, NodeRef];
    const driver = cluster.service.driver;
    await sql(primary, "CREATE TABLE amchecked AS SELECT g AS id FROM generate_series(1, 20000) g");
    await sql(primary, "CREATE INDEX amchecked_id ON amchecked (id)");
    // The replica restarts from a restartpoint past the index's creation, so replay never rewrites its pages.
    await sql(primary, "CHECKPOINT");
    const { file, lsn } = (
      await sql<{ file: string; lsn: string }>(
        primary,
        "SELECT pg_relation_filepath('amchecked_id') AS file, pg_current_wal_lsn()::text AS lsn",
      )
    )[0]!;
    await eventually(async () => {
      const replayed = (await sql<{ lsn: string }>(replica, "SELECT pg_last_wal_replay_lsn()::text AS lsn"))[0]!.lsn;
      return bytesBehind(lsn, replayed) === 0 ? true : undefined;
    });
    await cluster.service.failover.setMaintenance(true); // the replica is down on purpose
    try {
      await driver.stop(replica, { mode: "fast", timeoutMs: 60000 });
      // Block 1 is the index's leftmost leaf: swapping its first two data items' line pointers (offsets 2
      // and 3, after the high key) puts two keys out of order, which reading the page does not notice.
      const index = (await driver.readFile(replica, file))!;
      const leaf = 8192;
      const second = index.subarray(leaf + 28, leaf + 32);
      const third = Buffer.from(index.subarray(leaf + 32, leaf + 36));
      index.copyWithin(leaf + 32, leaf + 28, leaf + 32);
      third.copy(second);
      await driver.writeFile(replica, file, index);
      // New page checksums over the damage: the backup copies it as good data, its content checksums agree.
      // (--no-sync: a test node, and the server reads the files back from the page cache.)
      for (const step of ["--disable", "--enable"])
        await driver.exec(replica, ["pg_checksums", step, "--no-sync", "-D", driver.dataDirectory(replica)], {
          mode: "offline",
          timeoutMs: 120000,
        });
      await driver.start(replica, { timeoutMs: 60000 });
    } finally {
      await cluster.service.failover.setMaintenance(false);
    }
    // The backup is taken from a replica seen streaming: wait until the restarted one is.
    await eventually(
      async () => {
        await cluster.service.collector.pollNow();
        const seen = cluster.service.collector.latest?.nodes.find((node) => node.name === replica.name);
        return seen?.reachable && seen.replication?.state === "streaming" ? true : undefined;
      },
      { what: `${replica.name} streaming again`, timeoutMs: 60000 },
    );
    try {
      const backup = await (await cluster.service.backups.start("full")).done;
      expect(backup).toMatchObject({ status: "completed", source: replica.name });
      const bin = path.join(projectRoot(), "bin/relevo");
      const contentOnly = await run("node", [bin, "backup", "verify", backup.id], { env: cliEnvFor(cluster.config) });
      expect(contentOnly.stdout).toContain("content: ok");
      const restoreTested = await run("node", [bin, "backup", "verify", "--restore-test", backup.id], {
        env: cliEnvFor(cluster.config),
      }).then(
        () => null,
        (error: { code: number; stdout: string; stderr: string }) => error,
      );
      expect(restoreTested).toMatchObject({
        code: 1,
        stdout: expect.stringMatching(/content: ok\nrestore test: FAILED: pg_amcheck: .*amchecked_id/),
        stderr: expect.stringContaining(`backup ${backup.id} failed verification`),
      });
      expect((await cluster.service.backups.get(backup.id)).verification).toMatchObject({
        contentOk: true,
        badFiles: [],
        restoreTest: { ok: false, error: expect.stringMatching(/^pg_amcheck: .*item order invariant violated for index "amchecked_id"/) },
      });
    } finally {
      await sql(primary, "DROP TABLE amchecked"); // the damaged index with it, on the replica too
    }
  });
});
