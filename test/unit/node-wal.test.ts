import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, chown, mkdir, mkdtemp, readFile, readdir, rm, truncate, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { promisify } from "node:util";
import { configKeys } from "../../src/config/config-keys";
import { createLogger } from "../../src/log";
import { LocalDriver } from "../../src/nodes/local/local-driver";
import { resolvePostgresIdentity } from "../../src/nodes/os-user";
import {
  NODE_WAL_DIRECTORY,
  RECOVERY_ABORT_STATUS,
  nodeRestoreCommand,
  nodeWalAbortScript,
  nodeWalScript,
} from "../../src/restore/node-wal";
import { WalFeeder, type WalFeederOptions } from "../../src/restore/wal-feeder";
import type { WalSource } from "../../src/restore/wal-source";
import { trustOnlyTlsSource } from "../../src/tls/node-tls";
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

  test("while a history is wanted (a timeline probe between segments), the last segment asked stays the base: nothing replayed is fetched again", () => {
    const available = new Set(["00000002.history", ...[2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 21, 22].map((segment) => seg(1, segment))]);
    const plan = feedPlan({
      available,
      receiving: new Set(),
      delivered: new Set(["00000002.history", seg(1, 19), seg(1, 20)]),
      wanted: "00000003.history",
      lastSegmentAsked: seg(1, 20),
      path: path1,
      fromSegment: 2,
      ahead: 8,
    });
    expect(plan.fetch).toEqual([seg(1, 21), seg(1, 22)]);
    expect(plan.trim).toEqual([seg(1, 19)]);
  });

  test("expected: histories and segments from the backup's start on, one a line", () => {
    expect(expectedList([seg(1, 9), "00000002.history", seg(1, 1), seg(2, 10)], 9)).toBe(`${seg(1, 9)}\n00000002.history\n${seg(2, 10)}\n`);
    expect(expectedList([], null)).toBe("");
  });
});

describe("a node's restore_command script (run by sh, as PostgreSQL runs it)", () => {
  let pgdata: string;
  const waits = { recovery: 2, standby: 1 };
  const restore = async (name: string, mode: "recovery" | "standby", env?: NodeJS.ProcessEnv) => {
    const command = nodeRestoreCommand(mode).replace("%f", name).replace("%p", "pg_wal/RECOVERYXLOG");
    const started = Date.now();
    const result = await run("sh", ["-c", command], { cwd: pgdata, env }).then(
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

  test("a delivered file that cannot be copied (pg_wal failing) aborts a recovery, never reads as the end of the archive", async () => {
    await writeFile(path.join(pgdata, NODE_WAL_DIRECTORY, seg(1, 3)), "segment three");
    await rm(path.join(pgdata, "pg_wal"), { recursive: true }); // cp fails as on ENOSPC or EIO
    const recovery = await restore(seg(1, 3), "recovery");
    expect(recovery.status).toBe(RECOVERY_ABORT_STATUS);
    expect(recovery.stderr).toContain(`${seg(1, 3)} could not be copied`);
    expect((await restore(seg(1, 3), "standby")).status).toBe(1);
  });

  test("a file trimmed between the script's test and its copy is waited for again, never a fatal copy failure", async () => {
    await writeFile(path.join(pgdata, NODE_WAL_DIRECTORY, seg(1, 3)), "segment three");
    await writeFile(path.join(pgdata, NODE_WAL_DIRECTORY, "expected"), `${seg(1, 3)}\n`);
    // A cp that loses the race once: the feeder removes the file just as it opens it (ENOENT), as a trim does.
    const bin = path.join(pgdata, "bin");
    await mkdir(bin);
    await writeFile(
      path.join(bin, "cp"),
      `#!/bin/sh\nif [ ! -e "${bin}/raced" ]; then : > "${bin}/raced"; rm -f "$1"; echo "cp: cannot stat '$1'" >&2; exit 1; fi\nexec /bin/cp "$@"\n`,
    );
    await chmod(path.join(bin, "cp"), 0o755);
    const asked = restore(seg(1, 3), "recovery", { ...process.env, PATH: `${bin}:${process.env.PATH}` });
    // The feeder, asked again, delivers it again.
    await new Promise((resolve) => setTimeout(resolve, 500));
    await writeFile(path.join(pgdata, NODE_WAL_DIRECTORY, seg(1, 3)), "segment three again");
    const result = await asked;
    expect(result).toMatchObject({ status: 0 });
    expect(await readFile(path.join(pgdata, "pg_wal/RECOVERYXLOG"), "utf8")).toBe("segment three again");
  });

  test("a closed copy's script aborts every request", async () => {
    await writeFile(path.join(pgdata, NODE_WAL_DIRECTORY, "restore-wal.sh"), nodeWalAbortScript());
    await writeFile(path.join(pgdata, NODE_WAL_DIRECTORY, seg(1, 3)), "segment three");
    expect((await restore(seg(1, 3), "recovery")).status).toBe(RECOVERY_ABORT_STATUS);
  });
});

describe("a WAL feeder on a node's relevo_wal/ (local driver, no server)", () => {
  let home: string;
  let driver: LocalDriver;
  let walDir: string;
  const node = { name: "r1", host: "127.0.0.1", port: 1 };
  const feeders: WalFeeder[] = [];
  const open = async (source: WalSource, options: Partial<WalFeederOptions> = {}): Promise<WalFeeder> => {
    const feeder = await WalFeeder.open({
      driver,
      node,
      source,
      logger: createLogger({ level: "silent" }),
      mode: "standby",
      timeline: "latest",
      from: null,
      ...options,
    });
    feeders.push(feeder);
    return feeder;
  };
  const archive = (names: () => string[]): WalSource => ({
    list: () => Promise.resolve({ names: names(), receiving: [] }),
    fetch: (name) => Promise.resolve(names().includes(name) ? Readable.from([Buffer.from(`content of ${name}`)]) : null),
  });
  const expectedNow = async (): Promise<string> => readFile(path.join(walDir, "expected"), "utf8").catch(() => "(absent)");
  const until = async (check: () => Promise<boolean>, ms: number): Promise<void> => {
    const deadline = Date.now() + ms;
    while (!(await check()) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
  };

  beforeEach(async () => {
    home = await mkdtemp(path.join(os.tmpdir(), "wal-feeder-"));
    const identity = resolvePostgresIdentity("postgres")!;
    const data = path.join(home, "nodes", node.name, "data");
    await mkdir(data, { recursive: true, mode: 0o700 });
    await chmod(path.join(home, "nodes"), 0o755);
    for (const dir of [path.dirname(data), data]) await chown(dir, identity.uid, identity.gid);
    driver = new LocalDriver({ home, pgBinDir: configKeys.pgBinDir.default, pgOsUser: "postgres", tls: trustOnlyTlsSource("") });
    walDir = path.join(data, NODE_WAL_DIRECTORY);
  });
  afterEach(async () => {
    for (const feeder of feeders.splice(0)) await feeder.close().catch(() => undefined);
    await rm(home, { recursive: true, force: true });
  });

  test("in recovery mode a name once listed stays expected when a listing no longer has it: waited for, never the end of the archive", async () => {
    let names = [seg(1, 3), seg(1, 4), seg(1, 5)];
    await open(
      archive(() => names),
      { mode: "recovery", from: { timeline: 1, lsn: "0/3000028" }, ahead: 0 },
    );
    expect(await expectedNow()).toBe(`${seg(1, 3)}\n${seg(1, 4)}\n${seg(1, 5)}\n`);
    names = [seg(1, 3), seg(1, 5), seg(1, 6)]; // 4 expired, or missed by a listing during a rename
    await until(async () => (await expectedNow()).includes(seg(1, 6)), 5000);
    expect(await expectedNow()).toBe(`${seg(1, 3)}\n${seg(1, 4)}\n${seg(1, 5)}\n${seg(1, 6)}\n`);
  }, 15000);

  test("a feeder whose node was destroyed stops: it never makes the data directory again", async () => {
    let names = [seg(1, 3)];
    await open(archive(() => names));
    await driver.destroy(node);
    expect(existsSync(path.join(home, "nodes", node.name))).toBe(false);
    names = [seg(1, 3), seg(1, 4)]; // the archive grows: the feeder would write a new `expected`
    await new Promise((resolve) => setTimeout(resolve, 1600));
    expect(existsSync(path.join(home, "nodes", node.name))).toBe(false);
  }, 15000);

  test("a `wanted` the PostgreSQL user made huge is not read (bounded read): the feeder goes on following the archive", async () => {
    let names = [seg(1, 3)];
    await open(archive(() => names));
    await writeFile(path.join(walDir, "wanted"), "");
    await truncate(path.join(walDir, "wanted"), 3 * 1024 ** 3); // sparse: costs the PostgreSQL user nothing to make
    names = [seg(1, 3), seg(1, 4)];
    await until(async () => (await expectedNow()).includes(seg(1, 4)), 4000);
    expect(await expectedNow()).toBe(`${seg(1, 3)}\n${seg(1, 4)}\n`);
  }, 15000);

  test("open() removes what an earlier feeder left in relevo_wal/", async () => {
    await mkdir(walDir, { mode: 0o700 });
    await writeFile(path.join(walDir, seg(1, 2)), "a stale .partial snapshot under its final name");
    await writeFile(path.join(walDir, "restore-wal.sh.relevo-tmp-1"), "left by a crash");
    await open(archive(() => [seg(1, 5)]));
    expect((await readdir(walDir)).sort()).toEqual(["expected", "restore-wal.sh"]);
  });

  test("a restored copy's closed feeder leaves a script that aborts recovery, not a missing one (which reads as the end of the archive)", async () => {
    const feeder = await open(
      archive(() => [seg(1, 3)]),
      { mode: "recovery", from: { timeline: 1, lsn: "0/3000028" } },
    );
    await feeder.close();
    expect(await readdir(walDir)).toEqual(["restore-wal.sh"]);
    const command = nodeRestoreCommand("recovery").replace("%f", seg(1, 3)).replace("%p", "pg_wal/RECOVERYXLOG");
    const status = await run("sh", ["-c", command], { cwd: path.dirname(walDir) }).then(
      () => 0,
      (error: { code: number }) => error.code,
    );
    expect(status).toBe(RECOVERY_ABORT_STATUS);
  });
});
