import { expect } from "@jest/globals";
import { readdir } from "node:fs/promises";
import path from "node:path";
import type { BackupManifest } from "../../src/backup/manifest";
import type { NodeRef } from "../../src/nodes/node-driver";
import { parseSegmentName, segmentNumber } from "../../src/postgres/wal-names";
import { walSummaryKey } from "../../src/repository/repository-layout";
import { backupHelpers } from "../helpers/backups";
import { eventually, useTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";

/**
 * The spool is a cache: a segment pushed into the repository and gone from
 * Relevo's disk before it was summarised (the spool lost or wiped, a
 * legacy wal/ drained) is summarised from the repository's archive, by a
 * backup on the spot or by the periodic pass. A differential or
 * incremental over that WAL stays one, read from the WAL (not a page
 * scan), and restores exactly.
 */
describe("WAL summaries after the spool is lost", () => {
  const cluster = useTestCluster("summaries-spool-lost");
  const helpers = backupHelpers(cluster);
  const primary = () => cluster.service.nodes[0]!;
  const sql = <T = Record<string, unknown>>(text: string) => sqlOn<T>(primary(), cluster.service.secrets, text);
  const repository = () => cluster.service.repository;
  const scratch = () => path.join(cluster.config.home, "tmp");
  const restored: NodeRef[] = [];
  const backups: Record<string, BackupManifest> = {};

  afterAll(async () => {
    for (const node of restored) await cluster.service.driver.destroy(node).catch(() => undefined);
  });

  const take = helpers.take;

  /** Writes that change some of `kept`'s blocks, over two segments at least, all pushed into the repository. */
  async function changeAndArchive(label: string): Promise<void> {
    await sql(`UPDATE kept SET v = '${label} ' || id WHERE id % 1000 = 0`);
    await sql("SELECT pg_switch_wal()");
    await sql(
      `INSERT INTO kept SELECT g, '${label}' FROM generate_series((SELECT max(id) + 1 FROM kept), (SELECT max(id) + 5000 FROM kept)) g`,
    );
    const switched = (await sql<{ lsn: string }>("SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn;
    await cluster.service.archiver.waitForArchived(1, switched, switched, 60000);
  }

  /**
   * Relevo's disk loses the spool (the archiver stopped meanwhile; the
   * primary still has what the repository lacks, for the hold slot), and
   * every summary of the segments from `from` on is gone too.
   */
  async function loseSpoolAndSummaries(from: number): Promise<string[]> {
    await cluster.service.archiver.stop();
    for (const name of await repository().spool.names()) await repository().spool.remove(name);
    const { objects, generation, archive } = repository();
    const lost = (await archive.names()).filter((name) => (parseSegmentName(name)?.segment ?? -1) >= from);
    for (const name of lost) await objects.store.delete([walSummaryKey(generation, name)]);
    cluster.service.archiver.start();
    return lost;
  }

  test("a differential right after the spool is lost is still one, its changes summarised from the archive on the spot", async () => {
    await sql("CREATE TABLE kept (id int PRIMARY KEY, v text)");
    await sql("INSERT INTO kept SELECT g, md5(g::text) FROM generate_series(1, 200000) g");
    await sql("VACUUM ANALYZE kept");
    backups.full = await take("full");
    // No periodic pass from here: whatever is summarised, the backup summarises.
    await cluster.service.walSummarizer.stop();
    await changeAndArchive("differential");
    const lost = await loseSpoolAndSummaries(segmentNumber(backups.full.startLsn));
    expect(lost.length).toBeGreaterThanOrEqual(2);

    backups.differential = await take("differential");
    expect(backups.differential).toMatchObject({ reference: backups.full.id, changesFrom: "wal", promotedToFull: null });
    // Block-level: a fraction of the full.
    expect(backups.differential.storedBytes).toBeLessThan(backups.full.storedBytes * 0.5);
    // Summarised from the archive's objects and stored; nothing left in scratch.
    for (const name of lost.filter((name) => parseSegmentName(name)!.segment < segmentNumber(backups.differential!.startLsn))) {
      expect(await repository().objects.readJson(walSummaryKey(repository().generation, name))).toMatchObject({ complete: true });
    }
    expect(await readdir(scratch())).toEqual([]);
  });

  test("the periodic pass summarises from the archive what the lost spool held; the incremental after it is from the WAL", async () => {
    await changeAndArchive("incremental");
    const lost = await loseSpoolAndSummaries(segmentNumber(backups.differential!.startLsn));
    const wanted = lost.filter((name) => parseSegmentName(name)!.segment < Math.max(...lost.map((n) => parseSegmentName(n)!.segment)));
    cluster.service.walSummarizer.start();
    await eventually(
      async () => {
        const stored = await Promise.all(
          wanted.map((name) => repository().objects.readJson<{ complete: boolean }>(walSummaryKey(repository().generation, name))),
        );
        return stored.every((summary) => summary?.complete) ? true : undefined;
      },
      { what: `the summaries of ${wanted.join(", ")}`, timeoutMs: 60000 },
    );

    backups.incremental = await take("incremental");
    expect(backups.incremental).toMatchObject({ reference: backups.differential!.id, changesFrom: "wal", promotedToFull: null });
    expect(backups.incremental.storedBytes).toBeLessThan(backups.full!.storedBytes * 0.5);
  });

  test("the chain restored to a quiet point after the incremental matches the source in pg_dumpall", async () => {
    const { node, source, copy } = await helpers.restoreToQuietPoint({
      backupId: backups.incremental!.id,
      name: "spool-lost-copy",
      point: "spool-lost-quiet",
    });
    restored.push(node);
    expect(source.some((line) => line.includes("incremental"))).toBe(true);
    expect(copy).toEqual(source);
  });
});
