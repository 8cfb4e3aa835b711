import { expect } from "@jest/globals";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { copyNewerHistories } from "../../src/failover/old-primary-candidate";
import { createLogger } from "../../src/log";
import { LocalDriver } from "../../src/nodes/local/local-driver";
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
  // The repository's WAL directory: empty here (the archive's histories are historiesToCopy's unit tests').
  const archiveDir = () => path.join(home, "repository", "wal");
  const historyOf = (node: string, timeline: number) =>
    readFile(path.join(home, "nodes", node, "data", "pg_wal", `0000000${timeline}.history`), "utf8");

  beforeEach(async () => {
    home = await mkdtemp(path.join(tmpdir(), "relevo-histories-"));
    driver = new LocalDriver({ home, pgBinDir: "/usr/lib/postgresql/15/bin", pgOsUser: "postgres" });
    await mkdir(path.join(home, "nodes", "node1", "data", "pg_wal"), { recursive: true });
    await writeFile(path.join(home, "nodes", "node1", "data", "pg_wal", "00000002.history"), ownHistory);
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
    await copyNewerHistories({ driver, logger, walEnd, archiveWalDir: archiveDir() }, { node: node1, lost: node2, timeline: 2 });
    expect(asked).toEqual(["walEnd"]);
    expect(await historyOf("node1", 3)).toBe(`${ownHistory}2\t0/5000028\tpromotion of node2\n`);
  });

  test("node2's histories readable: those past node1's timeline are copied as they are, nothing written from the switch point", async () => {
    const node2History = `${ownHistory}2\t0/5000028\tno recovery target specified\n`;
    await mkdir(path.join(home, "nodes", "node2", "data", "pg_wal"), { recursive: true });
    await writeFile(path.join(home, "nodes", "node2", "data", "pg_wal", "00000002.history"), ownHistory);
    await writeFile(path.join(home, "nodes", "node2", "data", "pg_wal", "00000003.history"), node2History);
    const walEnd = () => Promise.reject(new Error("not needed: node2's history was read"));
    await copyNewerHistories({ driver, logger, walEnd, archiveWalDir: archiveDir() }, { node: node1, lost: node2, timeline: 2 });
    expect(await historyOf("node1", 3)).toBe(node2History);
    expect(await historyOf("node1", 2)).toBe(ownHistory);
  });

  test("node1's WAL end unreadable as well: COMMAND_FAILED, nothing written, node1 not promoted", async () => {
    await expect(
      copyNewerHistories(
        { driver, logger, walEnd: () => Promise.resolve(null), archiveWalDir: archiveDir() },
        { node: node1, lost: node2, timeline: 2 },
      ),
    ).rejects.toMatchObject({ code: "COMMAND_FAILED", message: expect.stringContaining("node1's WAL cannot be read") });
    await expect(historyOf("node1", 3)).rejects.toMatchObject({ code: "ENOENT" });
  });
});
