import { expect } from "@jest/globals";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { copyNewerHistories } from "../../src/failover/old-primary-candidate";
import { Repository, walSpoolDir } from "../../src/storage/repository";
import { createLogger } from "../../src/log";
import { LocalDriver } from "../../src/nodes/local/local-driver";
import { trustOnlyTlsSource } from "../../src/tls/node-tls";
import { testNode } from "../helpers/node-facts";

/**
 * The history files a switchover's stopped old primary (node1, on timeline
 * 2) gets before it is promoted in place of the lost new primary (node2):
 * node2's own when its pg_wal can be read, else the one node2 is known to
 * have made, written from the switch point. Real files in a data home of
 * their own, through the local driver; no server runs (where node1's WAL
 * ends is given, as pg_waldump would read it).
 */
describe("the lost primary's timeline histories, for the old primary promoted in its place", () => {
  let home = "";
  let driver: LocalDriver;
  const node1 = testNode("node1");
  const node2 = testNode("node2");
  const ownHistory = "1\t0/3000060\tno recovery target specified\n";
  const logger = createLogger({ level: "silent" });
  let repository: Repository;
  const archived = async () => (await readdir(repository.spoolDir)).sort();
  const historyOf = (node: string, timeline: number) =>
    readFile(path.join(home, "nodes", node, "data", "pg_wal", `0000000${timeline}.history`), "utf8");

  beforeEach(async () => {
    home = await mkdtemp(path.join(tmpdir(), "relevo-histories-"));
    driver = new LocalDriver({ home, pgBinDir: "/usr/lib/postgresql/15/bin", pgOsUser: "postgres", tls: trustOnlyTlsSource("") });
    await mkdir(path.join(home, "nodes", "node1", "data", "pg_wal"), { recursive: true });
    await writeFile(path.join(home, "nodes", "node1", "data", "pg_wal", "00000002.history"), ownHistory);
    repository = new Repository(path.join(home, "repository"), null, { spoolDir: walSpoolDir(home) });
    await repository.ensure();
  });
  afterEach(async () => {
    await rm(home, { recursive: true, force: true });
  });

  test("node2's pg_wal unreadable (its storage gone): timeline 3's history is written from where node1's WAL ends", async () => {
    const asked: string[] = [];
    const walEnd = () => {
      asked.push("walEnd");
      return Promise.resolve("0/5000028");
    };
    await copyNewerHistories({ driver, logger, walEnd, archive: repository.archivedWal }, { node: node1, lost: node2, timeline: 2 });
    expect(asked).toEqual(["walEnd"]);
    expect(await historyOf("node1", 3)).toBe(`${ownHistory}2\t0/5000028\tpromotion of node2\n`);
    // In the archive too: a restore to 'latest' finds every number up to node1's next.
    expect(await archived()).toEqual(["00000003.history"]);
    expect(await readFile(path.join(repository.spoolDir, "00000003.history"), "utf8")).toBe(
      `${ownHistory}2\t0/5000028\tpromotion of node2\n`,
    );
  });

  test("node2's pg_wal unreadable, its history archived already: the one written from the switch point takes the next number, in the archive too (no hole before node1's timeline)", async () => {
    const node2History = `${ownHistory}2\t0/5000028\tno recovery target specified\n`;
    await writeFile(path.join(repository.spoolDir, "00000003.history"), node2History);
    const walEnd = () => Promise.resolve("0/5000028");
    await copyNewerHistories({ driver, logger, walEnd, archive: repository.archivedWal }, { node: node1, lost: node2, timeline: 2 });
    expect(await historyOf("node1", 3)).toBe(node2History);
    expect(await historyOf("node1", 4)).toBe(`${ownHistory}2\t0/5000028\tpromotion of node2\n`);
    // node1 will be promoted onto 5: the archive holds 3 and 4, so PostgreSQL's search for the newest timeline reaches 5.
    expect(await archived()).toEqual(["00000003.history", "00000004.history"]);
    expect(await readFile(path.join(repository.spoolDir, "00000003.history"), "utf8")).toBe(node2History);
  });

  test("node2's histories readable: those past node1's timeline are copied as they are, nothing written from the switch point", async () => {
    const node2History = `${ownHistory}2\t0/5000028\tno recovery target specified\n`;
    await mkdir(path.join(home, "nodes", "node2", "data", "pg_wal"), { recursive: true });
    await writeFile(path.join(home, "nodes", "node2", "data", "pg_wal", "00000002.history"), ownHistory);
    await writeFile(path.join(home, "nodes", "node2", "data", "pg_wal", "00000003.history"), node2History);
    const walEnd = () => Promise.reject(new Error("not needed: node2's history was read"));
    await copyNewerHistories({ driver, logger, walEnd, archive: repository.archivedWal }, { node: node1, lost: node2, timeline: 2 });
    expect(await historyOf("node1", 3)).toBe(node2History);
    expect(await historyOf("node1", 2)).toBe(ownHistory);
  });

  test("node1's WAL end unreadable as well: COMMAND_FAILED, nothing written, node1 not promoted", async () => {
    await expect(
      copyNewerHistories(
        { driver, logger, walEnd: () => Promise.resolve(null), archive: repository.archivedWal },
        { node: node1, lost: node2, timeline: 2 },
      ),
    ).rejects.toMatchObject({ code: "COMMAND_FAILED", message: expect.stringContaining("node1's WAL cannot be read") });
    await expect(historyOf("node1", 3)).rejects.toMatchObject({ code: "ENOENT" });
    expect(await archived()).toEqual([]);
  });
});
