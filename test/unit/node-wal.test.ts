import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { NODE_WAL_DIRECTORY, RECOVERY_ABORT_STATUS, nodeRestoreCommand, nodeWalScript } from "../../src/restore/node-wal";
import { deliverableNames, expectedList, feedPlan, receivingNames, targetTimeline } from "../../src/restore/wal-feed-plan";
import { timelinePath } from "../../src/postgres/timelines";
import { segmentName } from "../../src/postgres/wal-names";

const run = promisify(execFile);
const seg = (timeline: number, segment: number): string => segmentName(timeline, segment);

describe("what a WAL feeder fetches and trims (pure)", () => {
  const path1 = timelinePath(1, null);

  test("the archive's names as a node asks for them: a .partial under its segment's name unless the segment is complete", () => {
    expect(
      deliverableNames([
        seg(1, 3),
        `${seg(1, 4)}.partial`,
        `${seg(1, 3)}.partial`,
        "00000002.history",
        "diverged",
        "000000010000000000000005.partial.relevo-tmp-1",
      ]),
    ).toEqual([seg(1, 3), seg(1, 4), "00000002.history"]);
    expect(receivingNames([seg(1, 3), `${seg(1, 4)}.partial`, `${seg(1, 3)}.partial`])).toEqual([seg(1, 4)]);
  });

  test("the segment still being received is fetched only when asked for: prefetched, its copy would end where the receipt stood then", () => {
    const available = new Set([seg(1, 2), seg(1, 3)]);
    const receiving = new Set([seg(1, 3)]);
    const none = new Set<string>();
    expect(feedPlan({ available, receiving, delivered: none, wanted: seg(1, 2), path: path1, fromSegment: 2, ahead: 4 }).fetch).toEqual([
      seg(1, 2),
    ]);
    expect(
      feedPlan({ available, receiving, delivered: new Set([seg(1, 2)]), wanted: seg(1, 3), path: path1, fromSegment: 2, ahead: 4 }),
    ).toEqual({ fetch: [seg(1, 3)], trim: [seg(1, 2)] });
  });

  test("before the first request: histories, then the backup's start segment and `ahead` more; nothing the source lacks", () => {
    const available = new Set(["00000002.history", ...[2, 3, 4, 5, 6].map((s) => seg(1, s))]);
    const plan = feedPlan({ available, receiving: new Set(), delivered: new Set(), wanted: null, path: path1, fromSegment: 2, ahead: 2 });
    expect(plan).toEqual({ fetch: ["00000002.history", seg(1, 2), seg(1, 3), seg(1, 4)], trim: [] });
  });

  test("the name asked comes first, even off the prefetched path; what is replayed before it is trimmed; what is there is not fetched again", () => {
    const available = new Set([2, 3, 4, 5, 6, 7].map((s) => seg(1, s)));
    const delivered = new Set([seg(1, 2), seg(1, 3), seg(1, 4)]);
    const plan = feedPlan({ available, receiving: new Set(), delivered, wanted: seg(1, 4), path: path1, fromSegment: 2, ahead: 2 });
    expect(plan).toEqual({ fetch: [seg(1, 5), seg(1, 6)], trim: [seg(1, 2), seg(1, 3)] });
    // A history asked for (PostgreSQL probing for a newer timeline) is fetched when the source has it; it trims nothing.
    const withHistory = new Set([...available, "00000002.history"]);
    expect(
      feedPlan({
        available: withHistory,
        receiving: new Set(),
        delivered,
        wanted: "00000002.history",
        path: path1,
        fromSegment: 2,
        ahead: 0,
      }),
    ).toEqual({
      fetch: ["00000002.history", seg(1, 2)].filter((name) => !delivered.has(name)),
      trim: [],
    });
  });

  test("along a timeline switch: the segment of the switch and those after it are the new timeline's files", () => {
    // Timeline 2 branched off timeline 1 inside segment 5 (0/5000100).
    const path2 = timelinePath(2, "1\t0/5000100\tno recovery target specified\n");
    const available = new Set([seg(1, 4), seg(1, 5), seg(2, 5), seg(2, 6), seg(1, 6), "00000002.history"]);
    const plan = feedPlan({
      available,
      receiving: new Set(),
      delivered: new Set(["00000002.history"]),
      wanted: seg(1, 4),
      path: path2,
      fromSegment: 4,
      ahead: 2,
    });
    expect(plan.fetch).toEqual([seg(1, 4), seg(2, 5), seg(2, 6)]);
    expect(targetTimeline({ asked: "latest", fromTimeline: 1, available: [...available] })).toBe(2);
    expect(targetTimeline({ asked: 1, fromTimeline: 1, available: [...available] })).toBe(1);
    expect(targetTimeline({ asked: "latest", fromTimeline: 3, available: [...available] })).toBe(3);
  });

  test("expected: histories and segments from the backup's start on, one a line", () => {
    expect(expectedList([seg(1, 9), "00000002.history", seg(1, 1), seg(2, 10)], 9)).toBe(`${seg(1, 9)}\n00000002.history\n${seg(2, 10)}\n`);
    expect(expectedList([], null)).toBe("");
  });
});

describe("a node's restore_command script (run by sh, as PostgreSQL runs it)", () => {
  let pgdata: string;
  const waits = { recovery: 2, standby: 1 };
  const restore = async (name: string, mode: "recovery" | "standby") => {
    const command = nodeRestoreCommand(mode).replace("%f", name).replace("%p", "pg_wal/RECOVERYXLOG");
    const started = Date.now();
    const result = await run("sh", ["-c", command], { cwd: pgdata }).then(
      (done) => ({ status: 0, stderr: done.stderr }),
      (error: { code: number; stderr: string }) => ({ status: error.code, stderr: error.stderr }),
    );
    return { ...result, ms: Date.now() - started };
  };

  beforeEach(async () => {
    pgdata = await mkdtemp(path.join(os.tmpdir(), "node-wal-"));
    await mkdir(path.join(pgdata, NODE_WAL_DIRECTORY));
    await mkdir(path.join(pgdata, "pg_wal"));
    await writeFile(path.join(pgdata, NODE_WAL_DIRECTORY, "restore-wal.sh"), nodeWalScript(waits));
  });
  afterEach(async () => {
    await rm(pgdata, { recursive: true, force: true });
  });

  test("a delivered file is copied to %p and recorded as wanted", async () => {
    await writeFile(path.join(pgdata, NODE_WAL_DIRECTORY, seg(1, 3)), "segment three");
    expect((await restore(seg(1, 3), "recovery")).status).toBe(0);
    expect(await readFile(path.join(pgdata, "pg_wal/RECOVERYXLOG"), "utf8")).toBe("segment three");
    expect(await readFile(path.join(pgdata, NODE_WAL_DIRECTORY, "wanted"), "utf8")).toBe(`${seg(1, 3)}\n`);
  });

  test("a name Relevo will not deliver fails at once: the end of the archive", async () => {
    await writeFile(path.join(pgdata, NODE_WAL_DIRECTORY, "expected"), `${seg(1, 3)}\n`);
    const result = await restore(seg(1, 4), "recovery");
    expect(result.status).toBe(1);
    expect(result.ms).toBeLessThan(1000);
    // No list at all (a standby whose feeder ended, a crash before the first list): nothing is waited for.
    await rm(path.join(pgdata, NODE_WAL_DIRECTORY, "expected"));
    expect((await restore(seg(1, 3), "standby")).status).toBe(1);
  });

  test("an expected name not fetched yet is waited for, then copied: never taken for the end of the archive", async () => {
    await writeFile(path.join(pgdata, NODE_WAL_DIRECTORY, "expected"), `${seg(1, 3)}\n`);
    const asked = restore(seg(1, 3), "recovery");
    await new Promise((resolve) => setTimeout(resolve, 700));
    await writeFile(path.join(pgdata, NODE_WAL_DIRECTORY, seg(1, 3)), "late segment");
    const result = await asked;
    expect(result.status).toBe(0);
    expect(result.ms).toBeGreaterThanOrEqual(600);
    expect(await readFile(path.join(pgdata, "pg_wal/RECOVERYXLOG"), "utf8")).toBe("late segment");
  });

  test("a wait that runs out aborts a recovery (a status PostgreSQL treats as fatal) and ends a standby's archive", async () => {
    await writeFile(path.join(pgdata, NODE_WAL_DIRECTORY, "expected"), `${seg(1, 3)}\n`);
    const recovery = await restore(seg(1, 3), "recovery");
    expect(recovery.status).toBe(RECOVERY_ABORT_STATUS);
    expect(RECOVERY_ABORT_STATUS).toBeGreaterThan(125);
    expect(recovery.stderr).toContain(`${seg(1, 3)} was not delivered`);
    expect((await restore(seg(1, 3), "standby")).status).toBe(1);
  });
});
