import { readdir, rm } from "node:fs/promises";
import path from "node:path";
import type { BackupManifest } from "../../src/backup/manifest";
import { parseSegmentName, segmentNumber } from "../../src/postgres/wal-names";
import { archiveKey, walSummaryKey } from "../../src/repository/repository-layout";
import type { NodeRef } from "../../src/nodes/node-driver";
import { graphqlRequest } from "../helpers/graphql-client";
import { freePort } from "../helpers/ports";
import { useTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";
import { asPreviousLayout, backupHelpers } from "../helpers/backups";

/**
 * full → changes → differential → changes → incremental → changes →
 * incremental, a writer running during every backup; each backup restored
 * to its reference point (taken by the restore test, on the second replica)
 * and every table's checksum compared with the source's at that point; the last
 * restored to a quiet point and compared with the source by pg_dumpall.
 */
describe("differential and incremental backups: block-level, from the WAL", () => {
  // Two replicas: the restore test pauses one that is not the only failover candidate.
  const cluster = useTestCluster("chain", { replicaCount: 2 });
  const primary = () => cluster.service.nodes[0]!;
  const sql = <T = Record<string, unknown>>(text: string, database = "postgres") =>
    sqlOn<T>(primary(), cluster.service.secrets, text, [], database);
  const backups: Record<string, BackupManifest> = {};
  const restored: NodeRef[] = [];

  afterAll(async () => {
    for (const node of restored) await cluster.service.driver.destroy(node).catch(() => undefined);
  });

  const helpers = backupHelpers(cluster);
  const backupUnderWriter = helpers.backupUnderWriter;
  async function restoreTest(id: string): Promise<void> {
    expect(await helpers.restoreTest(id)).toBeGreaterThanOrEqual(6);
  }

  test("an incremental with nothing to build on is taken as a full, and says why", async () => {
    await sql("CREATE TABLE ledger (id bigserial PRIMARY KEY, note text, pad text)");
    // 30 MB: its 1% is a few hundred blocks.
    await sql("CREATE TABLE big (id int PRIMARY KEY, v text) WITH (fillfactor = 90)");
    await sql("INSERT INTO big SELECT g, md5(g::text) || repeat('b', 40) FROM generate_series(1, 300000) g");
    await sql("CREATE TABLE toasty (id int PRIMARY KEY, doc text)");
    await sql("ALTER TABLE toasty ALTER COLUMN doc SET STORAGE EXTERNAL");
    await sql("INSERT INTO toasty SELECT g, repeat(md5(g::text), 400) FROM generate_series(1, 200) g");
    await sql("CREATE TABLE to_truncate AS SELECT g AS id, repeat('t', 200) AS pad FROM generate_series(1, 20000) g");
    await sql("CREATE TABLE to_vacuum AS SELECT g AS id, repeat('v', 200) AS pad FROM generate_series(1, 20000) g");
    await sql("CREATE TABLE to_drop AS SELECT g AS id FROM generate_series(1, 20000) g");
    // As on a settled database: the first read after a bulk load sets every
    // page's hint bits, which with data checksums logs a full-page image of
    // each (every block "changed" for the next backup).
    await sql("VACUUM ANALYZE");
    backups.full = await backupUnderWriter("incremental");
    expect(backups.full).toMatchObject({
      type: "full",
      status: "completed",
      reference: null,
      promotedToFull: "no completed backup to build on",
    });
    expect(backups.full.id).toMatch(/-F$/);
  });

  test("a full of the previous layout (manifest version 3, raw files by path) verifies, and the chain builds on it", async () => {
    const { repository } = cluster.service;
    expect(backups.full!.formatVersion).toBe(4);
    expect(backups.full!.files.some((entry) => entry.stored?.path.startsWith("data/") && entry.stored.offset === undefined)).toBe(true);
    // As a repository written before holds it: the rest of this file's chain (a differential, incrementals,
    // each restore-tested and the last restored and compared) builds on it, a version 4 child of a version 3 parent.
    backups.full = await asPreviousLayout(repository, backups.full!);
    expect(await repository.readManifest(backups.full.id)).toMatchObject({ formatVersion: 3 });
    expect(await repository.objects.list(`backups/${backups.full.id}/data/0`)).toEqual([]);
    const verified = await cluster.service.backups.verify(backups.full.id, { restoreTest: false });
    expect(verified.verification).toMatchObject({ contentOk: true, badFiles: [] });
  });

  test("a differential after a 1% update, new data and a TRUNCATE stores the changed blocks, not the files", async () => {
    await sql("UPDATE big SET v = v || '!' WHERE id BETWEEN 1000 AND 4000");
    await sql("INSERT INTO toasty SELECT g, repeat(md5((g * 7)::text), 500) FROM generate_series(201, 260) g");
    await sql("CREATE TABLE added AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g");
    await sql("TRUNCATE to_truncate");
    await sql("INSERT INTO to_truncate SELECT g, repeat('T', 100) FROM generate_series(1, 500) g");
    const diff = await backupUnderWriter("differential");
    backups.diff = diff;
    expect(diff).toMatchObject({
      type: "differential",
      status: "completed",
      reference: backups.full!.id,
      changesFrom: "wal",
      promotedToFull: null,
    });
    expect(diff.id).toMatch(/-D$/);
    const bigFile = diff.files.find((entry) => entry.blocks && entry.blocks.length > 0 && entry.size > 20 * 1024 * 1024);
    expect(bigFile).toBeDefined(); // big's heap: block-level
    expect(diff.blocksStored).toBeGreaterThan(0);
    expect(diff.storedBytes).toBeLessThan(backups.full!.storedBytes * 0.5);
    await restoreTest(diff.id);
  });

  test("an incremental after VACUUM FULL, DROP TABLE, CREATE DATABASE (both strategies) and a REINDEX restores exactly", async () => {
    // Settled before this backup, as the bulk load is before the full: the rows test 2 wrote get their
    // hint bits and visibility map bits now, not whenever autovacuum comes by (nothing else reads them
    // on the primary), whose full-page images of all of table added would land in a later, small incremental.
    await sql("VACUUM ANALYZE");
    await sql("VACUUM FULL to_vacuum");
    await sql("DROP TABLE to_drop");
    await sql("CREATE DATABASE made_by_wal STRATEGY WAL_LOG");
    await sql("CREATE TABLE inside AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 10000) g", "made_by_wal");
    await sql("CREATE DATABASE made_by_copy STRATEGY FILE_COPY");
    await sql("CREATE TABLE inside AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 10000) g", "made_by_copy");
    await sql("REINDEX TABLE big");
    await sql("UPDATE toasty SET doc = doc || 'changed' WHERE id <= 20");
    const incremental = await backupUnderWriter("incremental");
    backups.incr1 = incremental;
    expect(incremental).toMatchObject({ type: "incremental", reference: backups.diff!.id, changesFrom: "wal" });
    expect(incremental.id).toMatch(/-I$/);
    await restoreTest(incremental.id);
  });

  test("an incremental after a small change stores a small fraction of the full; backup(id) shows the chain", async () => {
    await sql("UPDATE big SET v = 'small change' WHERE id BETWEEN 150000 AND 150010");
    const incremental = await backupUnderWriter("incremental");
    backups.incr2 = incremental;
    expect(incremental).toMatchObject({ type: "incremental", reference: backups.incr1!.id, changesFrom: "wal" });
    // The writer's table and the catalogs change too; the relation files themselves are not copied.
    expect(incremental.storedBytes).toBeLessThan(backups.full!.storedBytes * 0.1);
    expect(incremental.blocksStored).toBeLessThan(500);
    const answer = await graphqlRequest<{
      backup: {
        type: string;
        blocksStored: number;
        filesStored: number;
        changesFrom: string;
        chain: Array<{ id: string; type: string; blocksStored: number }>;
      };
    }>(
      cluster.url,
      `query($id: ID!) { backup(id: $id) { type blocksStored filesStored changesFrom chain { id type blocksStored filesStored storedBytes } } }`,
      { token: cluster.token("viewer"), variables: { id: incremental.id } },
    );
    expect(answer.errors).toBeUndefined();
    expect(answer.data!.backup).toMatchObject({ type: "INCREMENTAL", changesFrom: "wal", blocksStored: incremental.blocksStored });
    expect(answer.data!.backup.chain.map((link) => [link.id, link.type])).toEqual([
      [backups.full!.id, "FULL"],
      [backups.diff!.id, "DIFFERENTIAL"],
      [backups.incr1!.id, "INCREMENTAL"],
      [incremental.id, "INCREMENTAL"],
    ]);
    await restoreTest(incremental.id);
  });

  test("the chain restored to a quiet point after its last backup matches the source in pg_dumpall", async () => {
    await helpers.quietPoint("chain-quiet");
    const target: NodeRef = { name: "chain-copy", host: primary().host, port: await freePort() };
    restored.push(target);
    await cluster.service.backups.restore({ backupId: backups.incr2!.id, target, recoveryTarget: { kind: "name", name: "chain-quiet" } });
    const [source, copy] = [await helpers.comparableDump(primary()), await helpers.comparableDump(target)];
    expect(source.length).toBeGreaterThan(100_000);
    const firstDifference = source.findIndex((line, index) => copy[index] !== line);
    expect({ line: firstDifference, source: source[firstDifference], copy: copy[firstDifference] }).toEqual({
      line: -1,
      source: undefined,
      copy: undefined,
    });
    expect(copy.length).toBe(source.length);
  });

  test("without the WAL since the reference, an incremental scans page LSNs and still restores exactly", async () => {
    await sql("UPDATE big SET v = 'scanned' WHERE id BETWEEN 200000 AND 200100");
    // Lose the archive between the last backup's start and now: the spool's files, the repository's objects (a
    // summary is otherwise made from those) and their summaries.
    const switched = (await sql<{ lsn: string }>("SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn;
    await cluster.service.archiver.waitForArchived(1, switched, switched, 60000);
    const { spoolDir, objects, generation, archive } = cluster.service.repository;
    const from = segmentNumber(backups.incr2!.startLsn);
    const lost = (name: string): boolean => {
      const segment = parseSegmentName(name)?.segment;
      return segment !== undefined && segment >= from + 1 && segment <= segmentNumber(switched);
    };
    for (const name of (await archive.names()).filter(lost)) {
      await objects.store.delete([archiveKey(generation, name), walSummaryKey(generation, name)]);
      archive.removed(name);
    }
    for (const name of (await readdir(spoolDir)).filter(lost)) await rm(path.join(spoolDir, name));
    const incremental = await backupUnderWriter("incremental");
    expect(incremental).toMatchObject({ type: "incremental", reference: backups.incr2!.id, changesFrom: "page-scan", status: "completed" });
    expect(incremental.storedBytes).toBeLessThan(backups.full!.storedBytes * 0.2);
    await restoreTest(incremental.id);
  });
});
