import { expect } from "@jest/globals";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile, readdir } from "node:fs/promises";
import path from "node:path";
import type { BackupManifest } from "../../src/backup/manifest";
import type { NodeRef } from "../../src/nodes/node-driver";
import { CURRENT_TIMELINE_SQL } from "../../src/postgres/node-state";
import { segmentName, segmentNumber } from "../../src/postgres/wal-names";
import { backupHelpers } from "../helpers/backups";
import { failoverHelpers } from "../helpers/failover";
import { graphqlRequest } from "../helpers/graphql-client";
import { freePort } from "../helpers/ports";
import { stopAfterCluster, useS3Repository, type S3TestServer } from "../helpers/s3-server";
import { eventually, useTestCluster, type TestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";

const BUCKET = "relevo-backups";

/** Every file s3rver keeps for the bucket's objects, as paths relative to its directory. */
async function bucketFiles(server: S3TestServer): Promise<string[]> {
  const entries = await readdir(path.join(server.directory, BUCKET), { recursive: true, withFileTypes: true });
  return entries.filter((entry) => entry.isFile()).map((entry) => path.relative(server.directory, path.join(entry.parentPath, entry.name)));
}

const REPOSITORY_FIELDS =
  "index type location endpoint encrypted inUse retentionFull retentionDays generation backups storedBytes storedBytesMeasuredAt " +
  "walPendingFiles lastPushAt failingSince lastError";

/** The `repositories` query as a viewer sees it: the answer, and its raw text (searched for credentials). */
async function repositoriesOf(cluster: TestCluster): Promise<{ repositories: Array<Record<string, unknown>>; raw: string }> {
  const answer = await graphqlRequest<{ repositories: Array<Record<string, unknown>> }>(
    cluster.url,
    `{ repositories { ${REPOSITORY_FIELDS} } }`,
    {
      token: cluster.token("viewer"),
    },
  );
  expect(answer.errors).toBeUndefined();
  return { repositories: answer.data!.repositories, raw: JSON.stringify(answer) };
}

async function take(cluster: TestCluster, type: "full" | "differential" | "incremental"): Promise<BackupManifest> {
  const manifest = await (await cluster.service.backups.start(type)).done;
  expect(manifest).toMatchObject({ type, status: "completed" });
  await cluster.service.backups.waitForIdle();
  return manifest;
}

describe("repository 1 in an S3 bucket", () => {
  const s3 = useS3Repository({ bucket: BUCKET, prefix: "clusters/main/" });
  const cluster = useTestCluster("s3-repository", {}, { env: s3.env });
  stopAfterCluster(s3);
  const helpers = backupHelpers(cluster);
  const primary = (): NodeRef => cluster.service.nodes[0]!;
  const sql = <T = Record<string, unknown>>(text: string, node: NodeRef = primary()) => sqlOn<T>(node, cluster.service.secrets, text);
  const backups: Record<string, BackupManifest> = {};
  const restored: NodeRef[] = [];
  const events = async (kind: string, since: number) =>
    (await cluster.service.events.page({ first: 500 })).events.filter((e) => e.kind === kind && Date.parse(e.occurredAt) >= since);

  afterAll(async () => {
    for (const node of restored) await cluster.service.driver.destroy(node).catch(() => undefined);
  });

  test("full, differential and incremental are written to the bucket, nothing to a directory, and the chain restores exactly", async () => {
    const { repository } = cluster.service;
    expect(repository.directory).toBeNull();
    expect(repository.location).toBe(`s3://${BUCKET}/clusters/main/ at ${s3.server().endpoint}`);
    await sql("CREATE TABLE ledger_s3 (id serial PRIMARY KEY, body text)");
    await sql("INSERT INTO ledger_s3 (body) SELECT md5(g::text) FROM generate_series(1, 20000) g");
    backups.full = await take(cluster, "full");
    await sql("UPDATE ledger_s3 SET body = body || '!' WHERE id <= 3000");
    backups.diff = await take(cluster, "differential");
    await sql("INSERT INTO ledger_s3 (body) SELECT 'after the differential ' || g FROM generate_series(1, 500) g");
    backups.incr = await take(cluster, "incremental");
    // The changes found from the WAL summaries, themselves objects in the bucket.
    expect(backups.diff).toMatchObject({ reference: backups.full.id, changesFrom: "wal" });
    expect(backups.incr).toMatchObject({ reference: backups.diff.id, changesFrom: "wal" });

    const files = await bucketFiles(s3.server());
    for (const prefix of ["manifests/", `backups/${backups.full.id}/`, `backups/${backups.incr.id}/`, "archive/", "wal-summary/"]) {
      expect(files.some((file) => file.includes(`clusters/main/${prefix}`))).toBe(true);
    }
    // The repository's default directory is never made: only the spool is on this host.
    expect(existsSync(path.join(cluster.config.home, "repository"))).toBe(false);
    expect(existsSync(repository.spoolDir)).toBe(true);

    await helpers.quietPoint("s3-quiet");
    const target: NodeRef = { name: "s3-copy", host: "127.0.0.1", port: await freePort() };
    restored.push(target);
    await cluster.service.backups.restore({ backupId: backups.incr.id, target, recoveryTarget: { kind: "name", name: "s3-quiet" } });
    expect(await helpers.comparableDump(target)).toEqual(await helpers.comparableDump(primary()));

    // The repositories query: where it is, what it holds, its WAL keeping up; never a credential.
    const { repositories, raw } = await repositoriesOf(cluster);
    expect(repositories).toEqual([
      expect.objectContaining({
        index: 1,
        type: "s3",
        location: `s3://${BUCKET}/clusters/main/`,
        endpoint: s3.server().endpoint,
        encrypted: false,
        inUse: true,
        generation: 0,
        backups: 3,
        failingSince: null,
        lastError: null,
      }),
    ]);
    const stored = repositories[0]!.storedBytes as number;
    const backupBytes = Object.values(backups).reduce((sum, manifest) => sum + manifest.storedBytes, 0);
    expect(stored).toBeGreaterThan(backupBytes);
    expect(typeof repositories[0]!.lastPushAt).toBe("string");
    expect(raw).not.toContain(s3.server().secretAccessKey);
  }, 300_000);

  test("the store down for over a minute: WAL waits in the spool and on the primary, the alert is raised; the spool lost meanwhile costs nothing; back, everything is pushed, the alert clears, a PITR inside the outage is exact", async () => {
    const { archiver, repository } = cluster.service;
    const timeline = (await sql<{ timeline: number }>("SELECT timeline_id AS timeline FROM pg_control_checkpoint()"))[0]!.timeline;
    const since = Date.now();
    await s3.server().stop();
    try {
      await outage();
    } finally {
      // Whatever failed, the next test finds the store up.
      if (!(await s3.server().running())) await s3.server().start();
    }
    async function outage(): Promise<void> {
      const outageStart = (await sql<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn"))[0]!.lsn;
      await sql("CREATE TABLE outage (id int PRIMARY KEY, v text)");
      await sql("INSERT INTO outage SELECT g, md5(g::text) FROM generate_series(1, 2000) g");
      await sql("SELECT pg_switch_wal()");
      await sql("INSERT INTO outage SELECT g, md5(g::text) FROM generate_series(2001, 3000) g");
      const target = (await sql<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn"))[0]!.lsn;
      const atTarget = await sql("SELECT count(*)::int AS rows, md5(string_agg(v, ',' ORDER BY id)) AS sum FROM outage");
      await sql("SELECT pg_switch_wal()");
      await sql("INSERT INTO outage SELECT g, md5(g::text) FROM generate_series(3001, 4000) g");
      await sql("SELECT pg_switch_wal()");
      const targetSegment = segmentName(timeline, segmentNumber(target));

      const failing = await eventually(async () => (await events("archive:push-failing", since))[0], {
        what: "archive:push-failing",
        timeoutMs: 120_000,
      });
      expect(failing).toMatchObject({ severity: "critical", data: { repository: repository.location } });
      expect(JSON.stringify(failing)).not.toContain(s3.server().secretAccessKey);
      const reasons = (await cluster.service.collector.pollNow()).healthReasons;
      expect(reasons.some((reason) => reason.includes("not pushed to the repository"))).toBe(true);
      const during = (await repositoriesOf(cluster)).repositories[0]!;
      // Answered while the store is down (it is then that operators ask): the last count, and why.
      expect(during).toMatchObject({ backups: 3, failingSince: expect.any(String), lastError: expect.stringContaining("ECONNREFUSED") });
      expect(during.walPendingFiles).toBeGreaterThan(0);
      // Received into the spool, not in the bucket; the primary keeps it past a checkpoint (the hold slot).
      expect(await repository.spool.names()).toContain(targetSegment);
      // Not in the bucket: looked at in s3rver's own files (the repository cannot be asked while its store is down).
      expect((await bucketFiles(s3.server())).filter((file) => file.includes(targetSegment))).toEqual([]);
      await sql("CHECKPOINT");
      expect((await sql<{ name: string }>("SELECT name FROM pg_ls_waldir()")).map((row) => row.name)).toContain(targetSegment);

      // Relevo's disk loses the spool (the archiver down meanwhile), and the store stays down past a minute.
      await archiver.stop();
      for (const name of await repository.spool.names()) await repository.spool.remove(name);
      const outage = Date.now() - since;
      if (outage < 65_000) await new Promise((resolve) => setTimeout(resolve, 65_000 - outage));
      await s3.server().start();
      archiver.start();

      // Every segment of the outage, not only the target's: puts run side by side, a later one may land first.
      await archiver.waitForArchived(timeline, outageStart, target, 120_000);
      expect((await cluster.service.backups.recoveryWindow()).gaps).toEqual([]);
      await eventually(async () => (await events("archive:push-recovered", since))[0], {
        what: "archive:push-recovered",
        timeoutMs: 60_000,
      });
      const after = (await cluster.service.collector.pollNow()).healthReasons;
      expect(after.filter((reason) => reason.includes("not pushed to the repository"))).toEqual([]);
      expect((await repositoriesOf(cluster)).repositories[0]).toMatchObject({ failingSince: null, lastError: null });

      const copy: NodeRef = { name: "s3-outage-copy", host: "127.0.0.1", port: await freePort() };
      restored.push(copy);
      await cluster.service.backups.restore({ backupId: backups.full!.id, target: copy, recoveryTarget: { kind: "lsn", lsn: target } });
      expect(
        await sqlOn(copy, cluster.service.secrets, "SELECT count(*)::int AS rows, md5(string_agg(v, ',' ORDER BY id)) AS sum FROM outage"),
      ).toEqual(atTarget);
    }
  }, 400_000);

  test("a point in time after a failover restores from a backup before it, the new timeline's WAL read from the bucket alone", async () => {
    const { node, primaryNow, state } = failoverHelpers(cluster);
    const old = node(await primaryNow());
    const survivor = cluster.service.nodes.find((n) => n.name !== old.name)!;
    await eventually(async () => ((await state()).eligible.includes(survivor.name) ? true : undefined), {
      what: `${survivor.name} eligible`,
      timeoutMs: 60_000,
    });
    await sql("CREATE TABLE story_s3 (id int PRIMARY KEY, chapter text)", old);
    await sql("INSERT INTO story_s3 VALUES (1, 'before the failover')", old);
    const before = (await sql<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn", old))[0]!.lsn;
    await eventually(
      async () =>
        (await sql<{ ok: boolean }>(`SELECT pg_last_wal_replay_lsn() >= '${before}' AS ok`, survivor))[0]!.ok ? true : undefined,
      { what: `${survivor.name} replayed the first chapter` },
    );
    await cluster.service.driver.kill(old);
    await eventually(async () => ((await primaryNow()) === survivor.name ? true : undefined), { what: "failover", timeoutMs: 60_000 });
    // The new timeline as its WAL names it (pg_control's checkpoint says the old one until the end-of-recovery checkpoint).
    const timeline = (await sql<{ timeline: number }>(`SELECT ${CURRENT_TIMELINE_SQL} AS timeline`, survivor))[0]!.timeline;
    await sql("INSERT INTO story_s3 VALUES (2, 'on the new timeline')", survivor);
    await sql("SELECT pg_create_restore_point('s3-after-failover')", survivor);
    await sql("INSERT INTO story_s3 VALUES (3, 'after the restore point')", survivor);
    const switched = (await sql<{ lsn: string }>("SELECT pg_switch_wal()::text AS lsn", survivor))[0]!.lsn;
    await cluster.service.archiver.waitForArchived(timeline, switched, switched, 90_000);

    // Nothing of it on this host any more: the spool emptied (the archiver stopped meanwhile).
    const { archiver, repository } = cluster.service;
    await archiver.stop();
    try {
      for (const name of await repository.spool.names()) await repository.spool.remove(name);
      const copy: NodeRef = { name: "s3-after-failover", host: "127.0.0.1", port: await freePort() };
      restored.push(copy);
      const used = await cluster.service.backups.restore({
        backupId: backups.full!.id,
        target: copy,
        recoveryTarget: { kind: "name", name: "s3-after-failover" },
      });
      expect(used.manifest.timeline).toBe(1);
      expect(timeline).toBeGreaterThan(1);
      expect(await sqlOn(copy, cluster.service.secrets, "SELECT id FROM story_s3 ORDER BY id")).toEqual([{ id: 1 }, { id: 2 }]);
    } finally {
      archiver.start();
    }
  }, 300_000);
});

/** In a table's rows, so in its data files and the WAL: no object in the bucket may hold it in its raw bytes. */
const KNOWN = `relevo-s3-plaintext-${randomBytes(8).toString("hex")}`;

describe("an encrypted repository in an S3 bucket", () => {
  const s3 = useS3Repository({ bucket: BUCKET, prefix: "encrypted/" }, { RELEVO_REPO1_CIPHER_PASS: "the S3 encrypted test's cipher pass" });
  const cluster = useTestCluster("s3-encrypted", { replicaCount: 0, backupCompression: "none" }, { env: s3.env });
  stopAfterCluster(s3);
  const helpers = backupHelpers(cluster);
  const primary = (): NodeRef => cluster.service.nodes[0]!;
  const sql = <T = Record<string, unknown>>(text: string) => sqlOn<T>(primary(), cluster.service.secrets, text);
  let copy: NodeRef | null = null;

  afterAll(async () => {
    if (copy) await cluster.service.driver.destroy(copy).catch(() => undefined);
  });

  test("a full and an incremental are written encrypted to the bucket and restore exactly; no object holds a row's bytes", async () => {
    await sql("CREATE TABLE notes (id serial PRIMARY KEY, body text)");
    await sql(`INSERT INTO notes (body) SELECT '${KNOWN} ' || g FROM generate_series(1, 2000) g`);
    const full = await take(cluster, "full");
    await sql(`INSERT INTO notes (body) VALUES ('${KNOWN} in the incremental')`);
    const incr = await take(cluster, "incremental");
    expect(incr).toMatchObject({ reference: full.id, changesFrom: "wal" });
    expect(new Set([full.dataKeyId, incr.dataKeyId]).size).toBe(2);

    await helpers.quietPoint("s3-encrypted-quiet");
    copy = { name: "s3-encrypted-copy", host: "127.0.0.1", port: await freePort() };
    await cluster.service.backups.restore({
      backupId: incr.id,
      target: copy,
      recoveryTarget: { kind: "name", name: "s3-encrypted-quiet" },
    });
    expect(await helpers.comparableDump(copy)).toEqual(await helpers.comparableDump(primary()));

    const files = await bucketFiles(s3.server());
    expect(files.some((file) => file.includes("encrypted/keys/keyring"))).toBe(true);
    expect(files.some((file) => file.includes("encrypted/archive/"))).toBe(true);
    const exposed: string[] = [];
    for (const file of files) if ((await readFile(path.join(s3.server().directory, file))).includes(Buffer.from(KNOWN))) exposed.push(file);
    expect(exposed).toEqual([]);
  }, 300_000);
});
