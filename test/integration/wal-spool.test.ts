import { expect } from "@jest/globals";
import { rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import type { BackupManifest } from "../../src/backup/manifest";
import type { NodeRef } from "../../src/nodes/node-driver";
import { lsnFromNumber, lsnToNumber } from "../../src/postgres/lsn";
import { SEGMENT_SIZE, segmentName, segmentNumber } from "../../src/postgres/wal-names";
import { HOLD_SLOT } from "../../src/wal/hold-slot";
import { freePort } from "../helpers/ports";
import { eventually, useTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";

/**
 * The spool is a cache: what pg_receivewal received and the repository
 * does not hold yet is kept on the primary for the archive's hold slot, so
 * a spool lost while the repository could not take it costs nothing.
 */
describe("the WAL spool and the archive's hold slot", () => {
  // Room for six segments: the first test's spool (five at most) is not full, the second's is made full.
  const cluster = useTestCluster("wal-spool", { walSpoolMax: 6 * SEGMENT_SIZE });
  const primary = () => cluster.service.nodes[0]!;
  const sql = <T = Record<string, unknown>>(text: string) => sqlOn<T>(primary(), cluster.service.secrets, text);
  const repository = () => cluster.service.repository;
  const restored: NodeRef[] = [];
  let full: BackupManifest;

  afterAll(async () => {
    for (const node of restored) await cluster.service.driver.destroy(node).catch(() => undefined);
  });

  /** The repository's store refuses every put: its archive/ a regular file (root ignores modes), the real one moved aside. */
  async function breakStore(): Promise<() => Promise<void>> {
    const archive = path.join(repository().root, "archive");
    await rename(archive, `${archive}.held`);
    await writeFile(archive, "not a directory");
    return async () => {
      await rm(archive);
      await rename(`${archive}.held`, archive);
    };
  }

  const events = async (kind: string, since: number) =>
    (await cluster.service.events.page({ first: 500 })).events.filter((e) => e.kind === kind && Date.parse(e.occurredAt) >= since);

  const holdRestart = async () =>
    (await sql<{ lsn: string }>(`SELECT restart_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = '${HOLD_SLOT}'`))[0]!.lsn;

  test("spool wiped while the repository could not take it: the archiver re-receives from the hold slot, no gap, a PITR inside it is exact", async () => {
    await sql("CREATE TABLE spooled (id int PRIMARY KEY, v text)");
    await sql("INSERT INTO spooled SELECT g, md5(g::text) FROM generate_series(1, 1000) g");
    full = await (await cluster.service.backups.start("full")).done;
    await cluster.service.backups.waitForIdle();
    const timeline = (await sql<{ timeline: number }>("SELECT timeline_id AS timeline FROM pg_control_checkpoint()"))[0]!.timeline;

    const fixStore = await breakStore();
    const holdBefore = await holdRestart();
    await sql("INSERT INTO spooled SELECT g, md5(g::text) FROM generate_series(1001, 3000) g");
    await sql("SELECT pg_switch_wal()");
    await sql("INSERT INTO spooled SELECT g, md5(g::text) FROM generate_series(3001, 4000) g");
    const target = (await sql<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn"))[0]!.lsn;
    const atTarget = await sql("SELECT count(*)::int AS rows, md5(string_agg(v, ',' ORDER BY id)) AS sum FROM spooled");
    await sql("SELECT pg_switch_wal()");
    await sql("INSERT INTO spooled SELECT g, md5(g::text) FROM generate_series(4001, 5000) g");
    await sql("SELECT pg_switch_wal()");
    const targetSegment = segmentName(timeline, segmentNumber(target));
    // Received (complete in the spool, a later segment begun), never pushed.
    await eventually(
      async () => {
        const names = await repository().spool.names();
        return names.includes(targetSegment) && names.includes(segmentName(timeline, segmentNumber(target) + 1)) ? true : undefined;
      },
      { what: `${targetSegment} and its successor received into the spool` },
    );
    expect(await repository().archive.missing([targetSegment])).toEqual([targetSegment]);
    // The hold slot did not move past what the repository lacks: the primary keeps it.
    expect(lsnToNumber(await holdRestart())).toBeLessThanOrEqual(Math.max(lsnToNumber(holdBefore), segmentNumber(target) * SEGMENT_SIZE));
    expect(lsnToNumber(await holdRestart())).toBeLessThan(segmentNumber(target) * SEGMENT_SIZE + 1);
    // A checkpoint first: WAL is recycled only then, so what pg_wal still has after it is what a slot keeps.
    await sql("CHECKPOINT");
    const inPgWal = await sql<{ name: string }>("SELECT name FROM pg_ls_waldir()");
    expect(inPgWal.map((row) => row.name)).toContain(targetSegment);

    // Relevo's disk loses the spool while the archiver is down.
    await cluster.service.archiver.stop();
    for (const name of await repository().spool.names()) await repository().spool.remove(name);
    await fixStore();
    cluster.service.archiver.start();

    await cluster.service.archiver.waitForArchived(timeline, target, target, 60000);
    expect((await cluster.service.backups.recoveryWindow()).gaps).toEqual([]);

    const copy: NodeRef = { name: "spool-copy", host: "127.0.0.1", port: await freePort() };
    restored.push(copy);
    await cluster.service.backups.restore({ backupId: full.id, target: copy, recoveryTarget: { kind: "lsn", lsn: target } });
    expect(
      await sqlOn(copy, cluster.service.secrets, "SELECT count(*)::int AS rows, md5(string_agg(v, ',' ORDER BY id)) AS sum FROM spooled"),
    ).toEqual(atTarget);
  });

  test("the repository unwritable: the hold slot stays, the primary keeps the WAL, a full spool stops receiving; fixed, all is pushed and it clears", async () => {
    const timeline = (await sql<{ timeline: number }>("SELECT timeline_id AS timeline FROM pg_control_checkpoint()"))[0]!.timeline;
    // Start from a spool at rest: everything pushed, the hold slot past it, the spool trimmed to its newest segment.
    await sql("INSERT INTO spooled VALUES (9999, 'at rest')");
    const switched = (await sql<{ lsn: string }>("SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn;
    await cluster.service.archiver.waitForArchived(timeline, switched, switched, 60000);
    await eventually(
      async () => ((await repository().spool.names()).filter((name) => /^[0-9A-F]{24}$/.test(name)).length <= 1 ? true : undefined),
      { what: "the spool trimmed behind the hold slot" },
    );
    const since = Date.now();
    const fixStore = await breakStore();
    const holdBefore = await holdRestart();
    const first = segmentNumber((await sql<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn"))[0]!.lsn);
    // Segment after segment until the spool is full and receiving stops.
    let id = 10000;
    const fullEvent = await eventually(
      async () => {
        await sql(`INSERT INTO spooled SELECT g, md5(g::text) FROM generate_series(${id + 1}, ${id + 100}) g`);
        id += 100;
        await sql("SELECT pg_switch_wal()");
        return (await events("archive:spool-full", since))[0];
      },
      { what: "archive:spool-full", timeoutMs: 90000 },
    );
    expect(fullEvent.severity).toBe("critical");
    expect(cluster.service.archiver.spoolFullReason).toContain("RELEVO_WAL_SPOOL_MAX");
    expect((await cluster.service.collector.pollNow()).healthReasons).toContain(cluster.service.archiver.spoolFullReason);
    await eventually(
      async () =>
        (await sql("SELECT 1 FROM pg_stat_replication WHERE application_name = 'relevo_archiver'")).length === 0 ? true : undefined,
      { what: "pg_receivewal stopped" },
    );
    // The repository took nothing: the hold slot stayed, and the primary keeps every segment since.
    expect(lsnToNumber(await holdRestart())).toBeLessThanOrEqual(Math.max(lsnToNumber(holdBefore), first * SEGMENT_SIZE));
    const last = segmentNumber((await sql<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn"))[0]!.lsn) - 1;
    const wanted = Array.from({ length: last - first + 1 }, (_, n) => segmentName(timeline, first + n));
    await sql("CHECKPOINT"); // WAL is recycled only at a checkpoint: what survives it is kept by a slot.
    const inPgWal = new Set((await sql<{ name: string }>("SELECT name FROM pg_ls_waldir()")).map((row) => row.name));
    expect(wanted.filter((name) => !inPgWal.has(name))).toEqual([]);

    expect(await events("archive:spool-cleared", since)).toEqual([]);
    await fixStore();
    await eventually(async () => (await events("archive:spool-cleared", since))[0], { what: "archive:spool-cleared", timeoutMs: 90000 });
    expect(cluster.service.archiver.spoolFullReason).toBeNull();
    await sql(`INSERT INTO spooled VALUES (${id + 1}, 'after')`);
    const end = (await sql<{ lsn: string }>("SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn;
    await cluster.service.archiver.waitForArchived(timeline, lsnFromNumber(first * SEGMENT_SIZE), end, 60000);
    expect(await repository().archive.missing(wanted)).toEqual([]);
    expect((await cluster.service.backups.recoveryWindow()).gaps).toEqual([]);
    // The hold slot moved on past what the repository now holds.
    expect(lsnToNumber(await holdRestart())).toBeGreaterThan(lsnToNumber(holdBefore));
  }, 400000);
});
