import { expect } from "@jest/globals";
import { existsSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { buffer } from "node:stream/consumers";
import path from "node:path";
import { backupId as newBackupId, type BackupManifest } from "../../src/backup/manifest";
import type { NodeRef } from "../../src/nodes/node-driver";
import { segmentName, segmentNumber } from "../../src/postgres/wal-names";
import { archiveKey, archivePrefix, backupContentPrefix, manifestKey } from "../../src/repository/repository-layout";
import { freePort } from "../helpers/ports";
import { eventually, useTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";

/**
 * A repository written by a Relevo from before manifests were repository
 * objects holds each backup's manifest as `backups/<id>/manifest.json`,
 * plain JSON. Made here from real backups: each backup's manifest object
 * moved back to that file, byte for byte what the old writer wrote. The
 * upgraded Relevo keeps every such backup: lists it as before, builds a new
 * backup on it, restores it, verifies and expires it, each rewrite leaving
 * one manifest (the object).
 */
describe("a repository written in the previous layout (legacy manifest files)", () => {
  const cluster = useTestCluster("legacy-layout");
  const primary = () => cluster.service.nodes[0]!;
  const sql = <T = Record<string, unknown>>(text: string) => sqlOn<T>(primary(), cluster.service.secrets, text);
  const repository = () => cluster.service.repository;
  const legacyFile = (id: string) => path.join(repository().backupDir(id), "manifest.json");
  const present = (file: string) =>
    readFile(file).then(
      () => true,
      () => false,
    );
  const restored: NodeRef[] = [];
  let full: BackupManifest;
  let incremental: BackupManifest;

  afterAll(async () => {
    for (const node of restored) await cluster.service.driver.destroy(node).catch(() => undefined);
  });

  /** The backup's manifest as the previous Relevo left it: its file, and no object. */
  async function toLegacyLayout(id: string): Promise<void> {
    const key = manifestKey(repository().generation, id);
    const manifest = await repository().objects.readJson<BackupManifest>(key);
    expect(manifest?.id).toBe(id);
    await mkdir(path.dirname(legacyFile(id)), { recursive: true, mode: 0o700 });
    await writeFile(legacyFile(id), JSON.stringify(manifest, null, 1) + "\n", { mode: 0o600 });
    await repository().objects.store.delete([key]);
    expect(await repository().objects.exists(key)).toBe(false);
  }

  test("a full backup whose manifest is a legacy file is listed and read as before; an incremental builds on it", async () => {
    await sql("CREATE TABLE legacy_rows (id int PRIMARY KEY, v text)");
    await sql("INSERT INTO legacy_rows SELECT g, md5(g::text) FROM generate_series(1, 1000) g");
    full = await (await cluster.service.backups.start("full")).done;
    await cluster.service.backups.waitForIdle();
    const listed = await cluster.service.backups.list();
    const summaries = await cluster.service.backups.listSummaries();
    await toLegacyLayout(full.id);

    expect(await cluster.service.backups.list()).toEqual(listed);
    expect(await cluster.service.backups.listSummaries()).toEqual(summaries);
    expect(await cluster.service.backups.get(full.id)).toEqual(full);

    await sql("INSERT INTO legacy_rows SELECT g, md5(g::text) FROM generate_series(1001, 1500) g");
    incremental = await (await cluster.service.backups.start("incremental")).done;
    await cluster.service.backups.waitForIdle();
    // Built on the legacy full (found by listing), not promoted to a full of its own.
    expect(incremental).toMatchObject({ type: "incremental", status: "completed", reference: full.id, promotedToFull: null });
  });

  test("the chain, both manifests legacy files, restores exactly what the incremental saw", async () => {
    await toLegacyLayout(incremental.id);
    await sql("INSERT INTO legacy_rows SELECT g, md5(g::text) FROM generate_series(1501, 1700) g");
    expect((await cluster.service.backups.list()).map((each) => [each.id, each.status])).toEqual([
      [full.id, "completed"],
      [incremental.id, "completed"],
    ]);
    expect(await cluster.service.backups.chain(incremental)).toEqual([full, incremental]);
    const copy: NodeRef = { name: "legacy-copy", host: "127.0.0.1", port: await freePort() };
    restored.push(copy);
    await cluster.service.backups.restore({ backupId: incremental.id, target: copy, recoveryTarget: { kind: "immediate" } });
    const counted = (node: NodeRef) =>
      sqlOn<{ rows: number; sum: string }>(
        node,
        cluster.service.secrets,
        "SELECT count(*)::int AS rows, md5(string_agg(v, ',' ORDER BY id)) AS sum FROM legacy_rows WHERE id <= 1500",
      );
    expect(await sqlOn(copy, cluster.service.secrets, "SELECT count(*)::int AS n FROM legacy_rows")).toEqual([{ n: 1500 }]);
    expect(await counted(copy)).toEqual(await counted(primary()));
  });

  test("a legacy wal/ (the archive as an older Relevo kept it) is drained at the archiver's start, then gone; a PITR across it restores exactly", async () => {
    const { spool, objects, generation, archive } = repository();
    await sql("INSERT INTO legacy_rows SELECT g, md5(g::text) FROM generate_series(1701, 1900) g");
    const target = (await sql<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn"))[0]!.lsn;
    const atTarget = await sql("SELECT count(*)::int AS rows, md5(string_agg(v, ',' ORDER BY id)) AS sum FROM legacy_rows");
    await sql("INSERT INTO legacy_rows SELECT g, md5(g::text) FROM generate_series(1901, 2000) g");
    const switched = (await sql<{ lsn: string }>("SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn;
    await cluster.service.archiver.waitForArchived(1, switched, switched, 60000);

    // The archive as an older Relevo left it: every segment and history a file of wal/, none an object, none in the spool.
    await cluster.service.archiver.stop();
    for (const name of await spool.names()) if (!name.endsWith(".partial")) await spool.remove(name);
    const legacyDir = path.join(repository().root, "wal");
    await mkdir(legacyDir, { mode: 0o700 });
    const names = await archive.names();
    expect(names).toContain(segmentName(1, segmentNumber(target)));
    for (const name of names) {
      await writeFile(path.join(legacyDir, name), await buffer(await objects.getStream(archiveKey(generation, name))), { mode: 0o600 });
      await objects.store.delete([archiveKey(generation, name)]);
      archive.removed(name);
    }
    expect(await archive.names()).toEqual([]);

    cluster.service.archiver.start();
    await eventually(() => Promise.resolve(existsSync(legacyDir) ? undefined : true), { what: "the legacy wal/ drained and removed" });
    expect(await archive.names()).toEqual(expect.arrayContaining(names));
    expect((await objects.list(archivePrefix(generation))).length).toBeGreaterThanOrEqual(names.length);

    const copy: NodeRef = { name: "legacy-wal-copy", host: "127.0.0.1", port: await freePort() };
    restored.push(copy);
    await cluster.service.backups.restore({ backupId: full.id, target: copy, recoveryTarget: { kind: "lsn", lsn: target } });
    expect(
      await sqlOn(
        copy,
        cluster.service.secrets,
        "SELECT count(*)::int AS rows, md5(string_agg(v, ',' ORDER BY id)) AS sum FROM legacy_rows",
      ),
    ).toEqual(atTarget);
  });

  test("a verification of a legacy backup records itself in the manifest object and removes the legacy file: one manifest", async () => {
    const verified = await cluster.service.backups.verify(full.id, { restoreTest: false });
    expect(verified.verification).toMatchObject({ contentOk: true, badFiles: [] });
    expect(await present(legacyFile(full.id))).toBe(false);
    expect(await repository().objects.readJson(manifestKey(repository().generation, full.id))).toEqual(verified);
    expect(await cluster.service.backups.get(full.id)).toEqual(verified);
    expect(await present(legacyFile(incremental.id))).toBe(true);
  });

  test("expiry expires legacy backups as any: manifests rewritten as objects (status expired), legacy files, content and older WAL gone", async () => {
    // Two newer fulls (manifests only) starting where the incremental stopped put the legacy chain beyond retention.
    const stopLsn = incremental.stopLsn!;
    const newer = [1, 2].map((n) => {
      const at = new Date(Date.now() + n * 1000);
      return { ...full, id: newBackupId("full", at), startedAt: at.toISOString(), startLsn: stopLsn };
    });
    for (const manifest of newer) await repository().writeManifest(manifest);
    try {
      const oldestKept = segmentNumber(stopLsn);
      const walBefore = (await repository().archivedSegmentList()).filter((segment) => segment.segment < oldestKept).length;
      expect(walBefore).toBeGreaterThan(0);
      const expiry = await cluster.service.backups.expire();
      expect([...expiry.expired].sort()).toEqual([full.id, incremental.id]);
      expect(expiry.walSegmentsRemoved).toBe(walBefore);
      for (const id of [full.id, incremental.id]) {
        expect(await present(legacyFile(id))).toBe(false);
        expect(await repository().objects.readJson(manifestKey(repository().generation, id))).toMatchObject({ id, status: "expired" });
        expect(await repository().objects.list(backupContentPrefix(repository().generation, id))).toEqual([]);
      }
      expect((await cluster.service.backups.listSummaries()).map((each) => [each.id, each.status])).toEqual([
        [full.id, "expired"],
        [incremental.id, "expired"],
        ...newer.map((manifest) => [manifest.id, "completed"]),
      ]);
    } finally {
      await repository().objects.store.delete(newer.map((manifest) => manifestKey(repository().generation, manifest.id)));
    }
  });
});
