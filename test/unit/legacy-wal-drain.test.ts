import { expect } from "@jest/globals";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { Readable } from "node:stream";
import { buffer } from "node:stream/consumers";
import path from "node:path";
import { createLogger } from "../../src/log";
import { archiveKey, divergedKey } from "../../src/repository/repository-layout";
import { Repository, walSpoolDir } from "../../src/storage/repository";
import { drainLegacyWal, legacyDrainPlan } from "../../src/wal/legacy-wal-drain";
import { tempHome } from "../helpers/home";

/**
 * A repository written before the spool holds its WAL in `wal/`: the
 * archiver drains it into the archive's objects before it receives, and
 * removes it; resumable after a crash at any point.
 */
const S3 = "000000010000000000000003";
const S4 = "000000010000000000000004";
const S5 = "000000010000000000000005";
const S6 = "000000010000000000000006";
const H2 = "00000002.history";

describe("what a drain does with a legacy wal/ (legacyDrainPlan)", () => {
  test("histories then segments oldest first are pushed; the .partial streaming resumes from goes to an empty spool", () => {
    expect(legacyDrainPlan([S4, `${S5}.partial`, S3, H2, "diverged", "x.tmp"], [], [])).toEqual({
      push: [H2, S3, S4],
      toSpool: [`${S5}.partial`],
      aside: [],
    });
  });

  test("a .partial behind the archive's end, or of a segment the spool has, is kept aside, never put in the spool", () => {
    // The archive already holds S5 complete: a .partial of S5 would restart streaming before its end.
    expect(legacyDrainPlan([`${S5}.partial`, S4], [], [S5])).toEqual({ push: [S4], toSpool: [], aside: [`${S5}.partial`] });
    // The spool (pg_receivewal since the upgrade) has the segment: its own is the one streaming resumes from.
    expect(legacyDrainPlan([`${S6}.partial`], [`${S6}.partial`], [S5])).toEqual({ push: [], toSpool: [], aside: [`${S6}.partial`] });
    // The spool went further: the legacy .partial is superseded.
    expect(legacyDrainPlan([`${S5}.partial`], [S5, `${S6}.partial`], [])).toEqual({ push: [], toSpool: [], aside: [`${S5}.partial`] });
  });
});

describe("drainLegacyWal", () => {
  async function legacyHome(label: string) {
    const home = await tempHome(label);
    const repository = new Repository(path.join(home, "repository"), null, { spoolDir: walSpoolDir(home) });
    await repository.ensure();
    const wal = path.join(repository.root, "wal");
    await mkdir(path.join(wal, "diverged", "2026-01-02T03-04-05-678Z"), { recursive: true, mode: 0o700 });
    await writeFile(path.join(wal, S3), "three");
    await writeFile(path.join(wal, S4), "four");
    await writeFile(path.join(wal, H2), "1\t0/4000000\tno recovery target specified\n");
    await writeFile(path.join(wal, `${S5}.partial`), "five, being received");
    await writeFile(path.join(wal, "diverged", "2026-01-02T03-04-05-678Z", S6), "six, off the history");
    const drain = () =>
      drainLegacyWal({
        legacy: repository.legacyWal!,
        spool: repository.spool,
        objects: repository.objects,
        generation: repository.generation,
        index: repository.archive,
        dataKey: undefined,
        logger: createLogger({ level: "silent" }),
      });
    const stored = async (key: string) => (await buffer(await repository.objects.getStream(key))).toString("utf8");
    return { repository, wal, drain, stored };
  }

  test("segments and histories become archive objects, the .partial moves to the spool, diverged/ to objects; wal/ is gone", async () => {
    const { repository, drain, stored } = await legacyHome("drain-all");
    expect(await drain()).toEqual({ pushed: 3, toSpool: [`${S5}.partial`], setAside: 1 });
    expect(await stored(archiveKey(0, S3))).toBe("three");
    expect(await stored(archiveKey(0, S4))).toBe("four");
    expect(await stored(archiveKey(0, H2))).toContain("0/4000000");
    expect(await repository.archive.names()).toEqual([S3, S4, H2]);
    expect(await stored(divergedKey(0, "2026-01-02T03-04-05-678Z", S6))).toBe("six, off the history");
    expect(await readdir(repository.spoolDir)).toEqual([`${S5}.partial`]);
    expect(await readFile(path.join(repository.spoolDir, `${S5}.partial`), "utf8")).toBe("five, being received");
    expect(await readdir(repository.root)).not.toContain("wal");
    // Nothing left: a later start finds no wal/.
    expect(await drain()).toBeNull();
  });

  test("resumed after a crash: pushed files stay pushed, a half-copied .partial is made anew whole", async () => {
    const { repository, wal, drain, stored } = await legacyHome("drain-resumed");
    // The crashed drain had put and removed S3, and was copying the .partial into the spool.
    await repository.objects.putStream(archiveKey(0, S3), Readable.from([Buffer.from("three")]));
    await rm(path.join(wal, S3));
    await writeFile(path.join(repository.spoolDir, `${S5}.partial.relevo-drain`), "five, be");
    expect(await drain()).toEqual({ pushed: 2, toSpool: [`${S5}.partial`], setAside: 1 });
    expect(await stored(archiveKey(0, S3))).toBe("three");
    expect(await readdir(repository.spoolDir)).toEqual([`${S5}.partial`]);
    expect(await readFile(path.join(repository.spoolDir, `${S5}.partial`), "utf8")).toBe("five, being received");
    expect(await readdir(repository.root)).not.toContain("wal");
  });

  test("a history the archive holds with other content is never replaced: the legacy one is kept under diverged/", async () => {
    const { repository, wal, drain, stored } = await legacyHome("drain-history");
    await repository.objects.putStream(archiveKey(0, H2), Readable.from([Buffer.from("1\t0/9000000\tthe archive's own\n")]));
    await drain();
    expect(await stored(archiveKey(0, H2))).toContain("the archive's own");
    const aside = (await repository.objects.list("diverged/")).map((info) => info.key).filter((key) => key.endsWith(H2));
    expect(aside).toHaveLength(1);
    expect(await stored(aside[0]!)).toContain("0/4000000");
    expect(await readdir(repository.root)).not.toContain(path.basename(wal));
  });
});
