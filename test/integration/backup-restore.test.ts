import { testClientSsl } from "../helpers/tls";
import { expect } from "@jest/globals";
import { Client } from "pg";
import type { BackupManifest } from "../../src/backup/manifest";
import { lsnToNumber } from "../../src/postgres/lsn";
import { existsSync } from "node:fs";
import { symlink } from "node:fs/promises";
import { backupId } from "../../src/backup/manifest";
import { backupContentPrefix, manifestKey } from "../../src/repository/repository-layout";
import { ErrorCode } from "../../src/errors";
import type { NodeRef } from "../../src/nodes/node-driver";
import { mergeSummaries } from "../../src/backup/change-plan";
import { parseSegmentName, segmentName, segmentNumber, segmentStartLsn } from "../../src/postgres/wal-names";
import { restoreBackup, seedStandbyFromBackup } from "../../src/restore/restore";
import { ROLE_REPLICATION } from "../../src/postgres/managed-settings";
import { repositoryWalSource, type WalSource } from "../../src/restore/wal-source";
import { superuserCredentials } from "../../src/cluster/bootstrap";
import { legacyWalSummaryKey, walSummaryKey } from "../../src/repository/repository-layout";
import { freePort } from "../helpers/ports";
import { eventually, useTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";
import { startWriter } from "../helpers/writer";
import { flipContentByte } from "../helpers/backups";
import path from "node:path";
import { restoreCommand, restoreStopCommand } from "../../src/cli/backup-commands";
import { createLogger } from "../../src/log";

/** The reference point's checksum of ledger, computed the same way on the primary. */
const LEDGER_SUM =
  "SELECT count(*)::text AS rows, coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0)::text AS checksum FROM ONLY public.ledger t";

const LEDGER_CHANGED = "SELECT count(*)::int AS n FROM ledger WHERE note = 'changed after the backup'";

/** Ordered-content checksum of a table: equal only if every row is. */
const TABLE_CHECKSUM = (table: string) =>
  `SELECT count(*)::int AS rows, md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), '')) AS sum FROM ${table} t`;

describe("full backup and point-in-time restore", () => {
  // Two replicas: the restore test takes its reference point on one that is not the only failover candidate.
  const cluster = useTestCluster("backup", { replicaCount: 2 });
  const primary = () => cluster.service.nodes[0]!;
  const sql = <T = Record<string, unknown>>(node: NodeRef, text: string, params: unknown[] = []) =>
    sqlOn<T>(node, cluster.service.secrets, text, params);
  const restoredCopies: NodeRef[] = [];
  /** What the repository holds of a backup beside its manifest (manifests/<id>): its content's objects. */
  const contentOf = async (id: string): Promise<string[]> => {
    const repository = cluster.service.repository;
    return (await repository.objects.list(backupContentPrefix(repository.generation, id))).map((info) => info.key);
  };
  /** Closes the current WAL segment; returns an LSN inside the segment just completed. */
  const switchWal = async (): Promise<string> => (await sql<{ lsn: string }>(primary(), "SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn;

  /** What restoreBackup and seedStandbyFromBackup need of the service; `walSource` stands in for the archive. */
  const restoreDeps = (options: { walSource?: WalSource; level?: "warn" | "silent" } = {}) => ({
    clusterName: cluster.config.clusterName,
    maxSlotWalKeepSize: cluster.config.maxSlotWalKeepSize,
    driver: cluster.service.driver,
    repository: cluster.service.repository,
    superuser: superuserCredentials(cluster.service),
    logger: createLogger({ level: options.level ?? "warn" }),
    walSource: options.walSource,
  });

  afterAll(async () => {
    for (const node of restoredCopies) await cluster.service.driver.destroy(node).catch(() => undefined);
  });

  test("a backup taken under a concurrent writer restores to a named restore point with identical content", async () => {
    await sql(primary(), "CREATE TABLE ledger (id bigserial PRIMARY KEY, note text, pad text)");
    await sql(primary(), "INSERT INTO ledger (note, pad) SELECT 'seed ' || g, repeat('s', 500) FROM generate_series(1, 20000) g");
    await sql(primary(), "CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 1000) g");
    const writer = startWriter(primary(), cluster.service.secrets.superuserPassword);
    const { manifest, done } = await cluster.service.backups.start("full");
    expect(manifest.status).toBe("running");
    await expect(cluster.service.backups.start("full")).rejects.toMatchObject({ code: ErrorCode.BackupInProgress });
    const completed = await done;
    const written = await writer.stop();
    expect(written).toBeGreaterThan(0);
    expect(completed).toMatchObject({ status: "completed", type: "full", timeline: 1, source: "node1" });
    expect(completed.storedBytes).toBeLessThan(completed.sizeBytes);
    expect(completed.files.some((f) => f.path === "postmaster.pid" || f.path.startsWith("pg_wal/0"))).toBe(false);
    expect(completed.files.some((f) => f.path === "pg_wal" && f.type === "directory")).toBe(true);

    await sql(primary(), "INSERT INTO ledger (note) VALUES ('after the backup, before the restore point')");
    const expected = (await sql<{ rows: number; sum: string }>(primary(), TABLE_CHECKSUM("ledger")))[0]!;
    await sql(primary(), "SELECT pg_create_restore_point('after-backup-1')");
    await sql(primary(), "INSERT INTO ledger (note) VALUES ('after the restore point')");
    const switched = await switchWal();

    const copy: NodeRef = { name: "restore1", host: "127.0.0.1", port: await freePort() };
    restoredCopies.push(copy);
    await cluster.service.archiver.waitForArchived(1, completed.stopLsn!, switched, 60000);
    await cluster.service.backups.restore({
      backupId: completed.id,
      target: copy,
      recoveryTarget: { kind: "name", name: "after-backup-1" },
    });
    const restored = (await sql<{ rows: number; sum: string }>(copy, TABLE_CHECKSUM("ledger")))[0]!;
    expect(restored).toEqual(expected);
    // The unlogged table exists, empty (only its init fork was copied).
    expect(await sql(copy, "SELECT count(*)::int AS n FROM scratch")).toEqual([{ n: 0 }]);
    // A restored copy is on its own: no upstream, no archiving, a new timeline.
    const settings = await sql<{ name: string; setting: string }>(
      copy,
      "SELECT name, setting FROM pg_settings WHERE name IN ('primary_conninfo', 'archive_mode', 'primary_slot_name') ORDER BY name",
    );
    expect(settings).toEqual([
      { name: "archive_mode", setting: "off" },
      { name: "primary_conninfo", setting: "" },
      { name: "primary_slot_name", setting: "" },
    ]);
    expect(await sql(copy, "SELECT pg_is_in_recovery() AS r")).toEqual([{ r: false }]);
  });

  test("point in time: a time between two commits keeps the first and not the second", async () => {
    await sql(primary(), "CREATE TABLE pitr (id int PRIMARY KEY)");
    await sql(primary(), "INSERT INTO pitr VALUES (1)");
    const between = (await sql<{ t: string }>(primary(), "SELECT clock_timestamp()::text AS t"))[0]!.t;
    await new Promise((resolve) => setTimeout(resolve, 1100));
    await sql(primary(), "INSERT INTO pitr VALUES (2)");
    const lsn = await switchWal();
    await cluster.service.archiver.waitForArchived(1, lsn, lsn, 60000);
    const copy: NodeRef = { name: "restore2", host: "127.0.0.1", port: await freePort() };
    restoredCopies.push(copy);
    await cluster.service.backups.restore({
      target: copy,
      recoveryTarget: { kind: "time", time: new Date(between.replace(" ", "T").replace(/\+00$/, "Z")).toISOString() },
    });
    expect(await sql(copy, "SELECT id FROM pitr ORDER BY id")).toEqual([{ id: 1 }]);
  });

  test("WAL fed slowly to a restored copy: its restore_command waits for each segment, and recovery reaches the end of the archive instead of promoting early", async () => {
    await sql(primary(), "CREATE TABLE slow_feed (id int PRIMARY KEY, pad text)");
    const backup = await (await cluster.service.backups.start("full")).done;
    // Several segments after the backup's own WAL, each closed; the last row in the last one.
    for (let batch = 1; batch <= 3; batch += 1) {
      await sql(
        primary(),
        "INSERT INTO slow_feed SELECT g, repeat('x', 200) FROM generate_series($1::int * 1000 + 1, $1::int * 1000 + 1000) g",
        [batch],
      );
      await switchWal();
    }
    await sql(primary(), "INSERT INTO slow_feed VALUES (999999, 'the last row')");
    const last = await switchWal();
    await cluster.service.archiver.waitForArchived(1, backup.stopLsn!, last, 60000);
    const expected = (await sql<{ rows: number; sum: string }>(primary(), TABLE_CHECKSUM("slow_feed")))[0]!;
    expect(expected.rows).toBe(3001);

    // Every segment after the backup's end reaches the copy 2.5 s late: each time, the copy asks for one not there yet.
    // The repository's archive as a restore reads it (objects, then the spool): the spool alone is trimmed behind the pushes.
    const archive = repositoryWalSource(cluster.service.repository, cluster.service.repository.spool);
    const backupEnd = segmentNumber(backup.stopLsn!);
    const delayed: string[] = [];
    const slow: WalSource = {
      list: () => archive.list(),
      fetch: async (name) => {
        const segment = parseSegmentName(name);
        if (segment && segment.segment > backupEnd) {
          delayed.push(name);
          await new Promise((resolve) => setTimeout(resolve, 2500));
        }
        return archive.fetch(name);
      },
    };
    const copy: NodeRef = { name: "restore-slow", host: "127.0.0.1", port: await freePort() };
    restoredCopies.push(copy);
    const { service } = cluster;
    await restoreBackup(restoreDeps({ walSource: slow }), {
      manifest: backup,
      target: copy,
      members: service.nodes,
      recoveryTarget: { kind: "latest" },
      parallelism: 2,
      startTimeoutMs: 180000,
    });
    expect(delayed.length).toBeGreaterThanOrEqual(3);
    // Promoted only at the end of the archive: every row, the last included.
    expect((await sql<{ rows: number; sum: string }>(copy, TABLE_CHECKSUM("slow_feed")))[0]).toEqual(expected);
    // The copy's WAL directory went with the feeder; the copy never had the repository's path.
    expect(await service.driver.listFiles(copy, "relevo_wal")).toEqual([]);
    const settings = await sql<{ setting: string }>(copy, "SELECT setting FROM pg_settings WHERE name = 'restore_command'");
    expect(settings[0]!.setting).not.toContain(service.repository.root);
  });

  test("verification with a restore test, a writer running throughout: restored to the reference point, every table's checksum matches, recorded", async () => {
    const writer = startWriter(primary(), cluster.service.secrets.superuserPassword);
    const { done } = await cluster.service.backups.start("full");
    const manifest = await done;
    await cluster.service.backups.waitForIdle();
    // No reference point after the backup: the restore test takes it, on a replica.
    expect((await cluster.service.backups.get(manifest.id)).referencePoint).toBeUndefined();
    const verified = await cluster.service.backups.verify(manifest.id, { restoreTest: true });
    await writer.stop();
    const recorded = verified.referencePoint!;
    expect(recorded).toMatchObject({ kind: "replay-pause", name: `relevo-${manifest.id}`, timeline: 1 });
    expect(["node2", "node3"]).toContain(recorded.kind === "replay-pause" ? recorded.node : null);
    expect(lsnToNumber(recorded.lsn)).toBeGreaterThanOrEqual(lsnToNumber(manifest.stopLsn!));
    expect(recorded.tables).toEqual(expect.arrayContaining([expect.objectContaining({ database: "postgres", table: "public.ledger" })]));
    expect(recorded.tables.some((table) => table.database === "relevo")).toBe(true); // every database, Relevo's own included
    expect(verified.verification).toMatchObject({
      contentOk: true,
      badFiles: [],
      restoreTest: { ok: true, error: null, tablesCompared: recorded.tables.length },
    });
    expect((await cluster.service.backups.get(manifest.id)).verification?.restoreTest?.ok).toBe(true);
    // The scratch node is gone.
    const { readdir } = await import("node:fs/promises");
    expect((await readdir(`${cluster.config.home}/nodes`)).filter((name) => name.startsWith("verify-"))).toEqual([]);
  });

  test("the restore test reaches a reference taken after the backup, and names a row changed at the same row count", async () => {
    const backup = await (await cluster.service.backups.start("incremental")).done;
    const before = (await sql<{ checksum: string; rows: string }>(primary(), LEDGER_SUM))[0]!;
    // A row changed after the backup: the reference (taken by the restore test) holds it, so must the restore.
    await sql(primary(), "UPDATE ledger SET note = 'changed after the backup' WHERE id = (SELECT min(id) FROM ledger)");
    const after = (await sql<{ checksum: string; rows: string }>(primary(), LEDGER_SUM))[0]!;
    expect(after.rows).toBe(before.rows);
    expect(after.checksum).not.toBe(before.checksum);
    for (const replica of cluster.service.nodes.slice(1)) {
      await eventually(async () => ((await sql<{ n: number }>(replica, LEDGER_CHANGED))[0]!.n === 1 ? true : undefined));
    }
    const verified = await cluster.service.backups.verify(backup.id, { restoreTest: true });
    const point = verified.referencePoint!;
    const ledger = (entry: { database: string; table: string }) => entry.database === "postgres" && entry.table === "public.ledger";
    expect(point.tables.find(ledger)).toEqual({
      database: "postgres",
      table: "public.ledger",
      rows: Number(after.rows),
      checksum: after.checksum,
    });
    expect(verified.verification?.restoreTest).toMatchObject({ ok: true, error: null, referenceMissing: null });

    // As if the restore had lost the change: the reference says the row is as it was before, same row count.
    const tampered = point.tables.map((table) => (ledger(table) ? { ...table, checksum: before.checksum } : table));
    await cluster.service.repository.writeManifest({ ...verified, referencePoint: { ...point, tables: tampered } });
    try {
      const again = await cluster.service.backups.verify(backup.id, { restoreTest: true });
      expect(again.verification?.restoreTest).toMatchObject({
        ok: false,
        error: expect.stringContaining("postgres: public.ledger differs"),
      });
    } finally {
      await cluster.service.repository.writeManifest({ ...verified, verification: null });
    }
  });

  test("a backup and its restore test never make a writer wait, even behind a session idle in a transaction", async () => {
    // Idle in a transaction that inserted into ledger and holds a row lock:
    // a SHARE lock request on ledger would wait for it, and every INSERT behind that request.
    const idle = new Client({
      host: primary().host,
      port: primary().port,
      user: "postgres",
      password: cluster.service.secrets.superuserPassword,
      ssl: testClientSsl(),
    });
    await idle.connect();
    try {
      await idle.query("BEGIN");
      await idle.query("INSERT INTO ledger (note) VALUES ('idle in transaction')");
      await idle.query("SELECT id FROM ledger WHERE id = (SELECT min(id) FROM ledger) FOR UPDATE");
      // The writer runs through the backup and its restore test, whose reference point is taken then.
      const writer = startWriter(primary(), cluster.service.secrets.superuserPassword);
      let verified: BackupManifest;
      try {
        const backup = await (await cluster.service.backups.start("incremental")).done;
        await cluster.service.backups.waitForIdle();
        // Nor does the reference point the restore test takes wait for that transaction (on a replica, it is just in flight).
        verified = await cluster.service.backups.verify(backup.id, { restoreTest: true });
      } finally {
        expect(await writer.stop()).toBeGreaterThan(0);
      }
      expect(writer.slowestMs).toBeLessThan(200);
      expect(verified.verification?.restoreTest).toMatchObject({ ok: true, error: null, referenceMissing: null });
      expect(verified.referencePoint?.tables.length).toBeGreaterThan(0);
    } finally {
      await idle.end().catch(() => undefined);
    }
  });

  test("a backup of a quiet database reads no table on the primary and logs no full-page images there", async () => {
    // Never read since it was written: a scan would read every block and set every hint bit (a full-page image each, with checksums).
    await sql(primary(), "CREATE TABLE quiet AS SELECT g AS id, repeat('q', 400) AS pad FROM generate_series(1, 40000) g");
    const lsn = await switchWal();
    await cluster.service.archiver.waitForArchived(1, lsn, lsn, 60000);
    const costs = async () =>
      (
        await sql<{ blocks: string; fpi: string }>(
          primary(),
          // The tables' own blocks (heap, indexes, TOAST): sessions Relevo opens meanwhile (the archiver's hold slot, once a
          // second) read catalogs at their start, which is no table read by the backup.
          "SELECT (SELECT coalesce(sum(coalesce(heap_blks_read, 0) + coalesce(heap_blks_hit, 0) + coalesce(idx_blks_read, 0) + " +
            "coalesce(idx_blks_hit, 0) + coalesce(toast_blks_read, 0) + coalesce(toast_blks_hit, 0)), 0) FROM pg_statio_user_tables)::text " +
            "AS blocks, (SELECT wal_fpi FROM pg_stat_wal)::text AS fpi",
        )
      )[0]!;
    // What autovacuum reads and writes meanwhile is not the backup's cost.
    await sql(primary(), "ALTER SYSTEM SET autovacuum = off");
    await sql(primary(), "SELECT pg_reload_conf()");
    try {
      const before = await costs();
      await (
        await cluster.service.backups.start("incremental")
      ).done;
      await cluster.service.backups.waitForIdle();
      const after = await costs();
      expect(Number(after.blocks) - Number(before.blocks)).toBeLessThan(1000);
      expect(Number(after.fpi) - Number(before.fpi)).toBeLessThan(100);
    } finally {
      await sql(primary(), "ALTER SYSTEM RESET autovacuum");
      await sql(primary(), "SELECT pg_reload_conf()");
    }
  });

  test("two verifications of one backup at once (the schedule's and the API's): they take turns, each on its own scratch node, both prove it", async () => {
    const newest = await cluster.service.backups.latestCompleted();
    const { readdir } = await import("node:fs/promises");
    // A node is a directory: the claim on its name (`<name>.restore.lock`) and that file's temporary name while it
    // is written durably are files beside it, not other nodes.
    const scratchNodes = async () =>
      (await readdir(`${cluster.config.home}/nodes`, { withFileTypes: true }))
        .filter((entry) => entry.isDirectory() && entry.name.startsWith("verify-"))
        .map((entry) => entry.name);
    // Taking turns: never two scratch nodes at once (each has a name of its own, so only the lock keeps them apart).
    const seen = new Set<string>();
    let most = 0;
    let running = true;
    const watching = (async () => {
      while (running) {
        const now = await scratchNodes();
        now.forEach((name) => seen.add(name));
        most = Math.max(most, now.length);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })();
    const [one, two] = await Promise.all([
      cluster.service.backups.verify(newest.id, { restoreTest: true }),
      cluster.service.backups.verify(newest.id, { restoreTest: true }),
    ]).finally(() => (running = false));
    await watching;
    for (const verified of [one, two])
      expect(verified.verification).toMatchObject({ contentOk: true, restoreTest: { ok: true, error: null } });
    expect(seen.size).toBe(2);
    expect(most).toBe(1);
    // No scratch node left, nor the claim on its name.
    expect((await readdir(`${cluster.config.home}/nodes`)).filter((name) => name.startsWith("verify-"))).toEqual([]);
    expect(await cluster.service.repository.locks!.holder(newest.id)).toBeNull(); // released
  });

  test("relevo restore --to and the service share a backup's lock in Redis: the CLI waits while the service holds it, then restores", async () => {
    const newest = await cluster.service.backups.latestCompleted();
    const held = await cluster.service.repository.lockBackups([newest.id], { purpose: "expiry", waitMs: 0 });
    const logged: string[] = [];
    const logger = createLogger({ level: "info", destination: { write: (line: string) => void logged.push(line) } });
    const lines: string[] = [];
    const output = { out: (line: string) => void lines.push(line), terminal: false };
    const to = path.join(cluster.config.home, "cli-locked-copy");
    const restoring = restoreCommand(cluster.config, { to, port: await freePort(), backup: newest.id }, logger, output);
    const outcome = restoring.then(
      () => null,
      (error: unknown) => error,
    );
    try {
      const waiting = await eventually(
        () => logged.find((line) => line.includes(`waits for another holder of backup ${newest.id}'s lock`)),
        {
          what: "the CLI's wait for the service's lock",
          timeoutMs: 60000,
        },
      );
      expect(JSON.parse(waiting)).toMatchObject({ holder: { purpose: "expiry", pid: process.pid } });
      expect(lines).toEqual([]);
      await held.release();
      expect(await outcome).toBeNull();
      expect(lines[0]).toContain(`restored backup ${newest.id} into ${to}/data`);
      expect(await cluster.service.repository.locks!.holder(newest.id)).toBeNull();
    } finally {
      await held.release();
      await outcome;
      await restoreStopCommand(cluster.config, { to }, { out: () => undefined, terminal: false }).catch(() => undefined);
    }
  });

  test("a flipped byte in the repository: verify names the file; the restore fails (REPOSITORY_CORRUPT), naming it, and leaves nothing behind", async () => {
    const manifest = (await cluster.service.backups.list())
      .filter((backup) => backup.type === "full" && backup.status === "completed")
      .at(-1)!;
    const victim = manifest.files.find((f) => f.type === "file" && f.path.startsWith("base/") && f.size > 8192)!;
    // Mid-way through the victim's own range (small files share a bundle).
    const at = (victim.stored!.offset ?? 0) + Math.floor(victim.stored!.bytes / 2);
    const putBack = await flipContentByte(cluster.service.repository, manifest.id, victim.stored!.path, at);
    const copy: NodeRef = { name: "restore3", host: "127.0.0.1", port: await freePort() };
    try {
      const verified = await cluster.service.backups.verify(manifest.id, { restoreTest: true });
      // The object's check covers a MiB of its content at a time: the victim and whatever shares that MiB of its bundle.
      expect(verified.verification).toMatchObject({ contentOk: false, restoreTest: { ok: false } });
      expect(verified.verification!.badFiles).toContain(victim.path);
      const sharing = manifest.files.filter((f) => f.stored && f.stored.path === victim.stored!.path).map((f) => f.path);
      expect(sharing).toEqual(expect.arrayContaining(verified.verification!.badFiles as string[]));
      await expect(
        cluster.service.backups.restore({ backupId: manifest.id, target: copy, recoveryTarget: { kind: "immediate" } }),
      ).rejects.toMatchObject({
        code: ErrorCode.RepositoryCorrupt,
        message: expect.stringContaining(`backup ${manifest.id} is damaged`),
        // Every file of the damaged MiB (the message names the first few).
        details: { files: expect.arrayContaining([victim.path]) },
      });
      expect(await cluster.service.driver.state(copy)).toEqual({ phase: "absent" });
    } finally {
      await putBack();
    }
  });

  test("a restore whose backup lock lapses (Redis lost it) stops with LOCK_LOST and destroys its copy, never reports a copy it no longer protects", async () => {
    const { service } = cluster;
    const backup = await (await service.backups.start("full")).done;
    await switchWal();
    const archive = repositoryWalSource(service.repository, service.repository.spool);
    let lapsed = false;
    const losing: WalSource = {
      list: () => archive.list(),
      fetch: async (name) => {
        if (!lapsed && parseSegmentName(name)) {
          lapsed = true;
          await service.redis.del(service.keys.backupLock(backup.id)); // as a Redis restarted without its data would
          // Long enough for a renewal to find the lock gone before the copy gets this segment.
          await new Promise((resolve) => setTimeout(resolve, cluster.config.leaseTtlMs));
        }
        return archive.fetch(name);
      },
    };
    const copy: NodeRef = { name: "restore-lapsed", host: "127.0.0.1", port: await freePort() };
    restoredCopies.push(copy);
    const restoring = restoreBackup(restoreDeps({ walSource: losing, level: "silent" }), {
      manifest: backup,
      target: copy,
      members: service.nodes,
      recoveryTarget: { kind: "latest" },
      parallelism: 2,
      startTimeoutMs: 120000,
    });
    await expect(restoring).rejects.toMatchObject({ code: ErrorCode.LockLost, details: { backupId: backup.id } });
    expect(lapsed).toBe(true);
    expect(await service.driver.state(copy)).toEqual({ phase: "absent" });
  });

  test("a verification whose backup lock lapses stops with LOCK_LOST and writes no result", async () => {
    const { service } = cluster;
    const backup = await service.backups.latestCompleted();
    const before = (await service.repository.readManifest(backup.id))!.verification ?? null;
    const verifying = service.backups.verify(backup.id, { restoreTest: true });
    const outcome = verifying.then(
      () => null,
      (error: unknown) => error,
    );
    await eventually(
      async () => ((await service.repository.locks!.holder(backup.id))?.purpose.startsWith("verification") ? true : undefined),
      {
        what: "the verification's lock",
        timeoutMs: 30000,
      },
    );
    await service.redis.del(service.keys.backupLock(backup.id)); // as a Redis restarted without its data would
    expect(await outcome).toMatchObject({ code: ErrorCode.LockLost, details: { backupId: backup.id } });
    expect((await service.repository.readManifest(backup.id))!.verification ?? null).toEqual(before);
  });

  test("a replica seeded from the repository holds the backup's lock until its seeding closes (its catch-up reads the archive from the backup's start)", async () => {
    const { service } = cluster;
    const backup = await service.backups.latestCompleted();
    const node: NodeRef = { name: "seeded-locked", host: "127.0.0.1", port: await freePort() };
    restoredCopies.push(node);
    const seeded = await seedStandbyFromBackup(restoreDeps({ level: "silent" }), {
      manifest: backup,
      node,
      upstream: primary(),
      slot: "seeded_locked",
      replication: {
        ...superuserCredentials(service),
        user: ROLE_REPLICATION,
        password: service.secrets.replicationPassword,
        database: "replication",
      },
      parallelism: 2,
    });
    expect(seeded).not.toBeNull();
    try {
      // Materialised and fed, not started: an expiry now skips the backup and keeps the WAL the catch-up reads.
      expect(await service.repository.locks!.holder(backup.id)).toMatchObject({ purpose: `seed replica ${node.name}`, pid: process.pid });
    } finally {
      await seeded!.close();
    }
    expect(await service.repository.locks!.holder(backup.id)).toBeNull();
  });

  test("each archived segment is summarised once: the blocks an update touched, per relation file", async () => {
    await sql(primary(), "CREATE TABLE summarised AS SELECT g AS id, repeat('s', 200) AS pad FROM generate_series(1, 2000) g");
    const { file, blocks } = (
      await sql<{ file: string; blocks: number }>(
        primary(),
        "SELECT pg_relation_filepath('summarised') AS file, pg_relation_size('summarised') / 8192 AS blocks",
      )
    )[0]!;
    const relation = file.replace(/^base\//, "1663/");
    await sql(primary(), "SELECT pg_switch_wal()");
    // Only the last block's rows change; the segment holding the update is closed, then its successor too.
    await sql(primary(), `UPDATE summarised SET pad = 'changed' WHERE id > 1990`);
    const { segment } = (await sql<{ segment: string }>(primary(), "SELECT pg_walfile_name(pg_current_wal_lsn()) AS segment"))[0]!;
    await sql(primary(), "SELECT pg_switch_wal()");
    await sql(primary(), "CREATE TABLE nudge ()"); // something in the next segment, so that it can be closed too
    await sql(primary(), "SELECT pg_switch_wal()");
    const summary = await eventually(
      async () => {
        await cluster.service.walSummarizer.summarizePending();
        return (await cluster.service.walSummarizer.read(segment)) ?? undefined;
      },
      { what: `the summary of ${segment}`, timeoutMs: 30000 },
    );
    expect(summary).toMatchObject({ segment, timeline: 1, complete: true, error: null });
    // Stored as the repository's object (what a bucket holds too), not as a file of its own.
    const { objects, generation } = cluster.service.repository;
    expect(await objects.readJson(walSummaryKey(generation, segment))).toEqual(summary);
    expect(await objects.exists(legacyWalSummaryKey(generation, segment))).toBe(false);
    const touched = summary.blocks[relation]?.main ?? [];
    expect(touched.length).toBeGreaterThan(0);
    // The update touched the table's last blocks, not its first.
    expect(touched.every(([first]) => first >= Math.floor(blocks / 2))).toBe(true);
    expect(touched.some(([, last]) => last === blocks - 1)).toBe(true);
  });

  test("the segment summaries together hold every block the WAL touched, also those of records that cross from one segment into the next", async () => {
    // Several segments of full-page images, one record per page: the first
    // scan after a checkpoint sets every page's hint bits, which with data
    // checksums logs each page once. Some record straddles each boundary.
    await sql(primary(), "CREATE TABLE straddled AS SELECT g AS id, repeat(md5(g::text), 8) AS pad FROM generate_series(1, 150000) g");
    await sql(primary(), "CHECKPOINT");
    const { first } = (await sql<{ first: string }>(primary(), "SELECT pg_walfile_name(pg_current_wal_lsn()) AS first"))[0]!;
    await sql(primary(), "SELECT count(*) FROM straddled");
    const { last } = (await sql<{ last: string }>(primary(), "SELECT pg_walfile_name(pg_current_wal_lsn()) AS last"))[0]!;
    await sql(primary(), "SELECT pg_switch_wal()");
    await sql(primary(), "CREATE TABLE nudge2 ()");
    await sql(primary(), "SELECT pg_switch_wal()");
    const [a, b] = [parseSegmentName(first)!.segment, parseSegmentName(last)!.segment];
    expect(b - a).toBeGreaterThanOrEqual(2);
    const summarizer = cluster.service.walSummarizer;
    const perSegment = await eventually(
      async () => {
        await summarizer.summarizePending();
        const found = await Promise.all(Array.from({ length: b - a + 1 }, (_, index) => summarizer.read(segmentName(1, a + index))));
        return found.every((summary) => summary?.complete) ? found.map((summary) => summary!) : undefined;
      },
      { what: "the summaries of the update's segments", timeoutMs: 60000 },
    );
    // One pg_waldump over the whole range reads every record that crosses an inner boundary.
    const whole = await summarizer.summarizeUpTo(1, a, segmentStartLsn(b + 1));
    const merged = mergeSummaries(perSegment);
    const missing: string[] = [];
    for (const [relation, forks] of Object.entries(whole.blocks)) {
      for (const [fork, ranges] of Object.entries(forks)) {
        const have = merged.blocks.get(relation)?.get(fork) ?? [];
        for (const [from, to] of ranges) {
          for (let block = from; block <= to; block += 1)
            if (!have.some(([x, y]) => x <= block && block <= y)) missing.push(`${relation}/${fork}/${block}`);
        }
      }
    }
    expect(missing).toEqual([]);
  });

  test("a target outside the recoverable window is refused, naming the window", async () => {
    const copy: NodeRef = { name: "restore4", host: "127.0.0.1", port: await freePort() };
    await expect(
      cluster.service.backups.restore({ target: copy, recoveryTarget: { kind: "time", time: "2020-01-01T00:00:00Z" } }),
    ).rejects.toMatchObject({
      code: ErrorCode.PreconditionFailed,
      message: expect.stringMatching(/cannot restore to 2020-01-01T00:00:00Z: the recoverable window is \S+ \(\S+\) to \S+ \(\S+\)/),
    });
    expect(await cluster.service.driver.state(copy)).toEqual({ phase: "absent" });
    const window = await cluster.service.backups.recoveryWindow();
    expect(window.gaps).toEqual([]);
    expect(window.earliest?.timeline).toBe(1);
  });

  // The collisions below use the copy the first test restored (restore1, running) and the replica node2.
  test("a restored copy's name is no new replica's: addReplica and a second restore are refused, the copy untouched", async () => {
    const copy = restoredCopies[0]!;
    const before = (await sql<{ rows: number; sum: string }>(copy, TABLE_CHECKSUM("ledger")))[0]!;
    await expect(cluster.service.failover.addReplica(copy.name)).rejects.toMatchObject({
      code: "TARGET_NOT_EMPTY",
      message: expect.stringContaining(`${copy.name} is not a member, but a node of that name already exists here`),
    });
    await expect(
      cluster.service.backups.restore({ target: { ...copy, port: await freePort() }, recoveryTarget: { kind: "immediate" } }),
    ).rejects.toMatchObject({ code: "TARGET_NOT_EMPTY" });
    expect(cluster.service.nodes.map((node) => node.name)).not.toContain(copy.name);
    expect(await cluster.service.driver.state(copy)).toMatchObject({ phase: "running" });
    expect((await sql<{ rows: number; sum: string }>(copy, TABLE_CHECKSUM("ledger")))[0]).toEqual(before);
  });

  test("two restores into one new name at once (a retried request, two operators): one makes the copy, the other is refused and destroys nothing", async () => {
    // Two full backups, each its own chain: the restores do not take turns on a backup's lock, as two of one backup would.
    const fulls = (await cluster.service.backups.list()).filter((backup) => backup.status === "completed" && backup.type === "full");
    while (fulls.length < 2) fulls.unshift(await (await cluster.service.backups.start("full")).done);
    const contenders = fulls.slice(-2);
    const copies: NodeRef[] = [];
    while (copies.length < contenders.length) copies.push({ name: "raced", host: "127.0.0.1", port: await freePort() });
    restoredCopies.push(copies[0]!);
    const outcomes = await Promise.allSettled(
      contenders.map((backup, index) =>
        cluster.service.backups.restore({ backupId: backup.id, target: copies[index]!, recoveryTarget: { kind: "immediate" } }),
      ),
    );
    const won = outcomes.flatMap((outcome, index) => (outcome.status === "fulfilled" ? [index] : []));
    const lost = outcomes.flatMap((outcome) => (outcome.status === "rejected" ? [outcome.reason as unknown] : []));
    expect(lost).toEqual([expect.objectContaining({ code: "TARGET_NOT_EMPTY", message: expect.stringContaining("raced") })]);
    expect(won).toHaveLength(1);
    // The winner's copy is whole, its own backup's, and serves reads and writes.
    const winner = copies[won[0]!]!;
    expect(await cluster.service.driver.state(winner)).toMatchObject({ phase: "running" });
    const marker = JSON.parse((await cluster.service.driver.readFile(winner, "relevo.node.json"))!.toString("utf8")) as {
      restoredFrom: string;
    };
    expect(marker.restoredFrom).toBe(contenders[won[0]!]!.id);
    await sql(winner, "CREATE TABLE served AS SELECT g FROM generate_series(1, 10) g");
    expect(await sql(winner, "SELECT count(*)::int AS n, pg_is_in_recovery() AS r FROM served")).toEqual([{ n: 10, r: false }]);
    // Its claim on the name (beside nodes/raced) ended with the restore.
    expect(existsSync(path.join(cluster.config.home, "nodes", "raced.restore.lock"))).toBe(false);
  });

  test("a restored copy never takes a stopped member's port: refused, nothing made, the member starts again on it", async () => {
    const replica = cluster.service.nodes[1]!;
    const copy: NodeRef = { name: "on-a-member-port", host: replica.host, port: replica.port };
    restoredCopies.push(copy);
    await cluster.service.driver.stop(replica, { mode: "fast", timeoutMs: 60000 });
    try {
      await expect(cluster.service.backups.restore({ target: copy, recoveryTarget: { kind: "immediate" } })).rejects.toMatchObject({
        code: "PORT_IN_USE",
        message: expect.stringContaining(`port ${replica.port} is ${replica.name}'s, a member of the cluster (even while it is stopped)`),
      });
      expect(await cluster.service.driver.state(copy)).toEqual({ phase: "absent" });
    } finally {
      await cluster.service.driver.start(replica, { timeoutMs: 60000 });
    }
    expect(await sql(replica, "SELECT pg_is_in_recovery() AS r")).toEqual([{ r: true }]);
  });

  test("restore --to a member's node directory, or a link to it, is TARGET_IS_MEMBER: nothing written, the member untouched", async () => {
    const replica = cluster.service.nodes[1]!;
    const memberDirectory = path.dirname(cluster.service.driver.dataDirectory(replica));
    const link = path.join(cluster.config.home, "member-link");
    await symlink(memberDirectory, link);
    const lines: string[] = [];
    const output = { out: (line: string) => void lines.push(line), terminal: false };
    for (const to of [memberDirectory, link, path.join(link, "data")]) {
      await expect(
        restoreCommand(cluster.config, { to, port: await freePort() }, createLogger({ level: "silent" }), output),
      ).rejects.toMatchObject({
        code: "TARGET_IS_MEMBER",
        message: expect.stringContaining(`the node directory of ${replica.name}, a member of the cluster`),
      });
    }
    expect(lines).toEqual([]);
    expect(await sql(replica, "SELECT pg_is_in_recovery() AS r")).toEqual([{ r: true }]);
  });

  test("restore stop --to a member's directory is refused and the member keeps running; a copy's directory is stopped", async () => {
    const replica = cluster.service.nodes[1]!;
    const lines: string[] = [];
    const output = { out: (line: string) => void lines.push(line), terminal: false };
    const memberDirectory = path.dirname(cluster.service.driver.dataDirectory(replica));
    await expect(restoreStopCommand(cluster.config, { to: memberDirectory }, output)).rejects.toMatchObject({
      code: "NOT_A_RESTORED_COPY",
      message: expect.stringContaining(`${memberDirectory} is the data directory of ${replica.name}, a member of the cluster`),
    });
    expect(await cluster.service.driver.state(replica)).toMatchObject({ phase: "running" });
    expect(await sql(replica, "SELECT pg_is_in_recovery() AS r")).toEqual([{ r: true }]);
    expect(lines).toEqual([]);
    // The copy restore1's directory: its marker says it was restored, and it is no member.
    const copy = restoredCopies[0]!;
    await restoreStopCommand(cluster.config, { to: path.dirname(cluster.service.driver.dataDirectory(copy)) }, output);
    expect(await cluster.service.driver.state(copy)).toEqual({ phase: "stopped" });
    expect(lines).toEqual([expect.stringMatching(/^stopped the copy in /)]);
  });

  test("the primary dies while a backup runs: the backup is failed, the repository consistent, the next backup succeeds", async () => {
    await sql(primary(), "CREATE TABLE bulk AS SELECT g AS id, repeat(md5(g::text), 20) AS v FROM generate_series(1, 300000) g");
    const { manifest, done } = await cluster.service.backups.start("full");
    await cluster.service.failover.setMaintenance(true); // the primary comes back by itself here: no failover
    await cluster.service.driver.kill(primary());
    await expect(done).rejects.toMatchObject({ code: ErrorCode.CommandFailed });
    const failed = await cluster.service.backups.get(manifest.id);
    expect(failed).toMatchObject({ status: "failed", files: [] });
    expect(failed.error).toBeTruthy();
    expect(await contentOf(manifest.id)).toEqual([]);

    await cluster.service.driver.start(primary(), { timeoutMs: 60000 });
    await cluster.service.failover.setMaintenance(false);
    await cluster.service.collector.pollNow();
    const next = await (await cluster.service.backups.start("full")).done;
    expect(next.status).toBe("completed");
  });

  test("retention keeps the newest full backups and the WAL they need", async () => {
    const third = await (await cluster.service.backups.start("full")).done;
    await cluster.service.backups.waitForIdle(); // retention runs right after a backup completes
    const all = await cluster.service.backups.list();
    const completedOrExpired = all.filter((m) => m.status === "completed" || m.status === "expired");
    const kept = completedOrExpired.filter((m) => m.status === "completed");
    expect(kept.map((m) => m.id).slice(-1)).toEqual([third.id]);
    expect(kept).toHaveLength(2); // RELEVO_RETENTION_FULL defaults to 2
    const expired = completedOrExpired.filter((m) => m.status === "expired");
    expect(expired.length).toBeGreaterThanOrEqual(1);
    for (const gone of expired) expect(await contentOf(gone.id)).toEqual([]);
    const { segmentNumber } = await import("../../src/postgres/wal-names");
    const oldestKept = Math.min(...kept.map((m) => segmentNumber(m.startLsn)));
    const segments = await cluster.service.repository.archivedSegmentList();
    expect(segments.every((segment) => segment.segment >= oldestKept)).toBe(true);
    // Restoring the oldest kept backup still works with what is left.
    const copy: NodeRef = { name: "restore5", host: "127.0.0.1", port: await freePort() };
    restoredCopies.push(copy);
    await cluster.service.backups.restore({ backupId: kept[0]!.id, target: copy, recoveryTarget: { kind: "immediate" } });
    expect(await sql(copy, "SELECT count(*)::int AS n FROM pitr")).toEqual([{ n: 2 }]);
  });

  test("a verification and an expiry of one backup at once: one at a time, and the backup ends expired, never completed again", async () => {
    const oldest = (await cluster.service.backups.list()).find((m) => m.status === "completed" && m.type === "full")!;
    // A newer full (its manifest only) puts the oldest kept full beyond RELEVO_RETENTION_FULL.
    const newest = await cluster.service.backups.latestCompleted();
    const newer = { ...newest, id: backupId("full", new Date(Date.now() + 1000)), startedAt: new Date(Date.now() + 1000).toISOString() };
    await cluster.service.repository.writeManifest(newer);
    try {
      const verifying = cluster.service.backups.verify(oldest.id, { restoreTest: false });
      const expiring = cluster.service.backups.expire();
      const [verified, expiry] = await Promise.allSettled([verifying, expiring]);
      // Whichever took the lock first: a verification of the completed backup, or a refusal of an expired one.
      if (verified.status === "rejected") expect(verified.reason).toMatchObject({ code: ErrorCode.PreconditionFailed });
      else expect(verified.value.verification).toMatchObject({ contentOk: true, badFiles: [] });
      expect(expiry.status).toBe("fulfilled");
      if (expiry.status === "fulfilled" && !expiry.value.expired.includes(oldest.id)) {
        // The verification held the lock: the expiry skipped the backup rather than wait, and the next one expires it.
        expect(verified.status).toBe("fulfilled");
        expect(await cluster.service.backups.expire()).toMatchObject({ expired: [oldest.id] });
      }
      const after = await cluster.service.backups.get(oldest.id);
      expect(after.status).toBe("expired");
      expect(await contentOf(oldest.id)).toEqual([]);
    } finally {
      await cluster.service.repository.objects.store.delete([manifestKey(cluster.service.repository.generation, newer.id)]);
    }
  });
});
