import { expect } from "@jest/globals";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { access, mkdir, stat, utimes, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { BackupLocks, type HeldBackupLocks, type LockHolder } from "../../src/storage/backup-locks";
import { thisHost } from "../../src/storage/file-lock";
import { restoreCommand } from "../../src/cli/backup-commands";
import { loadConfig } from "../../src/config/config";
import { createLogger } from "../../src/log";
import { projectRoot } from "../../src/util/project-root";
import { tempHome } from "../helpers/home";
import { eventually } from "../helpers/service";
import { freePort } from "../helpers/ports";
import { ReplayPauseMarkers } from "../../src/cluster/replay-pause-markers";
import { redisKeys } from "../../src/redis/keys";
import { createRedisClient } from "../../src/redis/redis-client";
import { ensureRedisServer, type RedisServerHandle } from "../../src/redis/redis-server";
import type Redis from "ioredis";
import { Repository } from "../../src/storage/repository";
import { verifyBackup, type VerifyDeps } from "../../src/backup/verify";
import type { BackupManifest } from "../../src/backup/manifest";
import { newManifest } from "../../src/backup/backup-start";
import { BackupService, type BackupServiceDeps } from "../../src/backup/backup-service";
import { testRedisTls } from "../helpers/tls";

const ID = "20261125T224500Z-F";

/**
 * Another process holding a backup's lock, as the CLI's `relevo restore` or a
 * second service instance does: the built module (dist/, as bin/relevo runs
 * it) takes the lock, says so, and holds it until killed.
 */
async function holderProcess(root: string): Promise<ChildProcess> {
  const module = path.join(projectRoot(), "dist/src/storage/backup-locks.js");
  const script =
    `const { BackupLocks } = require(${JSON.stringify(module)});` +
    `new BackupLocks(${JSON.stringify(root)}).acquire([${JSON.stringify(ID)}], { purpose: "verification", waitMs: 0 })` +
    `.then(() => { console.log("held"); setInterval(() => {}, 1000); });`;
  const child = spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout });
  const [line] = (await once(lines, "line")) as [string];
  expect(line).toBe("held");
  return child;
}

describe("backup locks in the repository: across processes, never left held by a crash", () => {
  test("held by another process: the next holder waits, naming it; that process killed (SIGKILL), the lock is taken at once", async () => {
    const root = await tempHome("locks-crash");
    const child = await holderProcess(root);
    const locks = new BackupLocks(root);
    const waitedFor: LockHolder[] = [];
    let held: HeldBackupLocks | null = null;
    const acquiring = locks.acquire([ID], {
      purpose: "expiry",
      waitMs: 20_000,
      pollMs: 50,
      onWait: (_id, holder) => waitedFor.push(holder),
    });
    void acquiring.then((locked) => (held = locked));
    try {
      await eventually(() => (waitedFor.length > 0 ? true : undefined), { timeoutMs: 10000 });
      expect(waitedFor[0]).toMatchObject({ pid: child.pid, host: os.hostname(), purpose: "verification" });
      expect(held).toBeNull();
      child.kill("SIGKILL");
      await once(child, "exit");
      const taken = await acquiring;
      expect(await locks.holder(ID)).toMatchObject({ pid: process.pid, purpose: "expiry" });
      await taken.release();
      expect(await locks.holder(ID)).toBeNull();
    } finally {
      child.kill("SIGKILL");
    }
  });

  test("in one process, two holders of one backup take turns; locks on several backups are taken in one order", async () => {
    const locks = new BackupLocks(await tempHome("locks-turns"));
    const other = "20261126T000000Z-D";
    const first = await locks.acquire([other, ID], { purpose: "restore", waitMs: 0 });
    expect(first.ids).toEqual([ID, other]);
    let second: HeldBackupLocks | null = null;
    const acquiring = locks.acquire([ID], { purpose: "verification", waitMs: 20_000, pollMs: 20 }).then((locked) => (second = locked));
    await eventually(async () => ((await locks.holder(ID))?.purpose === "restore" ? true : undefined));
    expect(second).toBeNull();
    await first.release();
    await acquiring;
    expect(await locks.holder(ID)).toMatchObject({ purpose: "verification" });
    expect(await locks.holder(other)).toBeNull();
    await second!.release();
  });

  test("a lock naming a live pid whose process started at another time (the pid was reused) is a dead holder's", async () => {
    const root = await tempHome("locks-reused");
    const locks = new BackupLocks(root);
    await mkdir(locks.directory, { recursive: true });
    const stale: LockHolder = {
      ...(await thisHost()),
      pid: process.pid,
      processStart: "1",
      purpose: "verification",
      since: new Date(0).toISOString(),
      token: "dead",
    };
    await writeFile(path.join(locks.directory, `${ID}.lock`), JSON.stringify(stale));
    const held = await locks.acquire([ID], { purpose: "expiry", waitMs: 0 });
    expect(await locks.holder(ID)).toMatchObject({ purpose: "expiry" });
    await held.release();
  });
});

/** A lock file as a holder on another host leaves it: that host's name, its refresh interval. */
async function remoteLock(locks: BackupLocks, refreshMs: number): Promise<string> {
  await mkdir(locks.directory, { recursive: true });
  const holder: LockHolder = {
    host: "elsewhere.invalid",
    pid: 4242,
    processStart: "77",
    purpose: "restore into copy1",
    since: new Date().toISOString(),
    token: "remote",
    refreshMs,
  };
  const file = locks.fileOf(ID);
  await writeFile(file, JSON.stringify(holder));
  return file;
}

describe("backup locks: bounded waits, holders on other hosts, racing breakers", () => {
  test("a holder on another host that keeps touching its lock is waited for until the deadline, then LOCK_HELD names the file and holder", async () => {
    const locks = new BackupLocks(await tempHome("locks-remote-live"));
    const file = await remoteLock(locks, 100);
    // That host's holder, alive: it touches the file more often than its refresh interval.
    const touching = setInterval(() => void utimes(file, new Date(), new Date()).catch(() => undefined), 50);
    const waitedFor: LockHolder[] = [];
    try {
      await expect(
        locks.acquire([ID], { purpose: "verification", waitMs: 1000, pollMs: 20, onWait: (_id, holder) => waitedFor.push(holder) }),
      ).rejects.toMatchObject({
        code: "LOCK_HELD",
        message: expect.stringContaining(`lock ${file} is held by pid 4242 on elsewhere.invalid, restore into copy1`),
        details: { lockFile: file, holder: { host: "elsewhere.invalid", pid: 4242 } },
      });
    } finally {
      clearInterval(touching);
    }
    expect(waitedFor).toHaveLength(1);
    expect(await locks.holder(ID)).toMatchObject({ token: "remote" });
  });

  test("a holder on another host that stopped touching its lock is gone after three of its intervals: the lock is broken", async () => {
    const locks = new BackupLocks(await tempHome("locks-remote-dead"));
    await remoteLock(locks, 100);
    const started = Date.now();
    const held = await locks.acquire([ID], { purpose: "expiry", waitMs: 10_000, pollMs: 20 });
    // Never broken before three silent intervals as this process saw them.
    expect(Date.now() - started).toBeGreaterThanOrEqual(300);
    expect(await locks.holder(ID)).toMatchObject({ pid: process.pid, purpose: "expiry" });
    await held.release();
  });

  test("tried once per run (waitMs 0, as expiry does), a holder on another host that stopped touching its lock is broken on a later run", async () => {
    const locks = new BackupLocks(await tempHome("locks-remote-dead-once"));
    await remoteLock(locks, 100);
    await expect(locks.acquire([ID], { purpose: "expiry", waitMs: 0 })).rejects.toMatchObject({ code: "LOCK_HELD" });
    // The next run, more than three of its refresh intervals later: the file never changed meanwhile.
    await new Promise((resolve) => setTimeout(resolve, 400));
    const held = await locks.acquire([ID], { purpose: "expiry", waitMs: 0 });
    expect(await locks.holder(ID)).toMatchObject({ pid: process.pid, purpose: "expiry" });
    await held.release();
  });

  test("a holder with this host's name but another pid namespace or boot is judged by its refreshes, never by a pid here", async () => {
    const locks = new BackupLocks(await tempHome("locks-other-namespace"));
    await mkdir(locks.directory, { recursive: true });
    const here = await thisHost();
    // Pid 1 in its own container: here it is another process (or none), which says nothing about that holder.
    const holder: LockHolder = {
      ...here,
      hostId: "another-boot/pid:[1]",
      pid: 1,
      processStart: "",
      purpose: "restore test",
      since: "",
      token: "ns",
    };
    await writeFile(locks.fileOf(ID), JSON.stringify(holder));
    await expect(locks.acquire([ID], { purpose: "expiry", waitMs: 0 })).rejects.toMatchObject({ code: "LOCK_HELD" });
    expect(await locks.holder(ID)).toMatchObject({ token: "ns" });
  });

  test("tried once (waitMs 0), a held lock is LOCK_HELD at once; a holder touches its lock while it holds it", async () => {
    const locks = new BackupLocks(await tempHome("locks-refresh"), { refreshMs: 50 });
    const held = await locks.acquire([ID], { purpose: "restore", waitMs: 0 });
    await expect(locks.acquire([ID], { purpose: "expiry", waitMs: 0 })).rejects.toMatchObject({ code: "LOCK_HELD" });
    const file = locks.fileOf(ID);
    await utimes(file, new Date(0), new Date(0));
    await eventually(async () => ((await stat(file)).mtimeMs > Date.now() - 60_000 ? true : undefined), { timeoutMs: 5000 });
    await held.release();
    expect(await locks.holder(ID)).toBeNull();
  });

  test("many processes race to break one dead holder's lock, again after each holder dies: exactly one holder at any time", async () => {
    const root = await tempHome("locks-race");
    const locks = new BackupLocks(root);
    await mkdir(locks.directory, { recursive: true });
    const gone = spawn("true");
    await once(gone, "exit");
    const dead: LockHolder = { ...(await thisHost()), pid: gone.pid!, processStart: "", purpose: "crashed", since: "", token: "dead" };
    await writeFile(locks.fileOf(ID), JSON.stringify(dead));
    const go = path.join(root, "go");
    const inside = path.join(root, "inside");
    const module = path.join(projectRoot(), "dist/src/storage/backup-locks.js");
    // Each takes the lock, proves it is alone in it (an exclusive marker file), then dies holding it: the rest race
    // to break a dead holder's lock once more.
    const script =
      `const fs = require("fs"); const { BackupLocks } = require(${JSON.stringify(module)});` +
      `console.log("ready");` +
      `const start = () => fs.existsSync(${JSON.stringify(go)}) ? take() : setTimeout(start, 5);` +
      `const take = () => new BackupLocks(${JSON.stringify(root)}).acquire([${JSON.stringify(ID)}], { purpose: "race", waitMs: 60000, pollMs: 1 }).then(() => {` +
      `  try { fs.writeFileSync(${JSON.stringify(inside)}, String(process.pid), { flag: "wx" }); } catch { console.log("overlap"); }` +
      `  setTimeout(() => { fs.rmSync(${JSON.stringify(inside)}, { force: true }); console.log("alone"); process.exit(0); }, 20);` +
      `});` +
      `start();`;
    const children = Array.from({ length: 8 }, () => spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "inherit"] }));
    try {
      const outputs = children.map((child) => {
        const lines: string[] = [];
        createInterface({ input: child.stdout }).on("line", (line) => lines.push(line));
        return { lines, exited: once(child, "exit") };
      });
      await eventually(() => (outputs.every((output) => output.lines.includes("ready")) ? true : undefined), { timeoutMs: 30_000 });
      await writeFile(go, "");
      await Promise.all(outputs.map((output) => output.exited));
      expect(outputs.map((output) => output.lines.filter((line) => line !== "ready"))).toEqual(children.map(() => ["alone"]));
      // The last holder died holding it: broken once more, by this process.
      const held = await locks.acquire([ID], { purpose: "after the race", waitMs: 10_000 });
      await held.release();
      await expect(access(`${locks.fileOf(ID)}.break`)).rejects.toMatchObject({ code: "ENOENT" });
    } finally {
      for (const child of children) child.kill("SIGKILL");
    }
  });

  test("relevo restore --to a directory another restore has claimed is TARGET_NOT_EMPTY, nothing read or written", async () => {
    const home = await tempHome("locks-restore-claim");
    const directory = path.join(home, "copy");
    const module = path.join(projectRoot(), "dist/src/storage/file-lock.js");
    const script =
      `require(${JSON.stringify(module)}).acquireFileLock(${JSON.stringify(`${directory}.restore.lock`)}, { purpose: "restore", waitMs: 0 })` +
      `.then(() => { console.log("held"); setInterval(() => {}, 1000); });`;
    const child = spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "inherit"] });
    try {
      const [line] = (await once(createInterface({ input: child.stdout }), "line")) as [string];
      expect(line).toBe("held");
      const config = loadConfig({ RELEVO_HOME: home });
      await expect(
        restoreCommand(config, { to: directory, port: 1 }, createLogger({ level: "silent" }), { out: () => undefined, terminal: false }),
      ).rejects.toMatchObject({
        code: "TARGET_NOT_EMPTY",
        message: expect.stringContaining(`${directory}/data) is being made by another process, pid ${child.pid}`),
      });
      await expect(access(directory)).rejects.toMatchObject({ code: "ENOENT" });
    } finally {
      child.kill("SIGKILL");
    }
  });
});

describe("a replica's replay pause marker: one capture at a time, cleared by its owner only", () => {
  let server: RedisServerHandle;
  let redis: Redis;
  let markers: ReplayPauseMarkers;
  const keys = redisKeys("markers");

  beforeAll(async () => {
    const endpoint = { host: "127.0.0.1", port: await freePort(), password: "markers-test-password-0123" };
    const logger = createLogger({ level: "silent" });
    const tls = await testRedisTls();
    server = await ensureRedisServer({
      home: await tempHome("markers"),
      ...endpoint,
      bin: "redis-server",
      startTimeoutMs: 30000,
      logger,
      tls,
    });
    redis = createRedisClient({ ...endpoint, tls: tls.client }, { name: "markers" });
    await eventually(async () => ((await redis.ping().catch(() => null)) === "PONG" ? true : undefined));
    markers = new ReplayPauseMarkers(redis, keys);
  });

  afterAll(async () => {
    redis.disconnect();
    await server.stop();
  });

  test("a second capture on the replica waits for the first's release; a capture whose mark expired never clears the next one's", async () => {
    const first = await markers.hold("node2", { ttlMs: 10_000, waitMs: 0 });
    let second: string | null = null;
    const holding = markers.hold("node2", { ttlMs: 300, waitMs: 10_000, pollMs: 20 }).then((token) => (second = token));
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(second).toBeNull();
    await markers.release("node2", first);
    await holding;
    expect(await redis.get(keys.replayPauseMarker("node2"))).toBe(second);
    // The second's mark expires (its service died); a third capture marks; the second's late release leaves it.
    await eventually(async () => ((await markers.held("node2")) ? undefined : true), { timeoutMs: 5000 });
    const third = await markers.hold("node2", { ttlMs: 10_000, waitMs: 0 });
    await markers.release("node2", second!);
    expect(await redis.get(keys.replayPauseMarker("node2"))).toBe(third);
    await expect(markers.hold("node2", { ttlMs: 10_000, waitMs: 0 })).rejects.toMatchObject({ code: "LOCK_HELD" });
    await markers.release("node2", third);
    expect(await markers.held("node2")).toBe(false);
  });
});

describe("expiry and the service's stop against a verification under way", () => {
  /** A completed backup's manifest (no files: only its chain is checked). */
  const manifest = (type: "full" | "differential", startedAt: string, reference: string | null): BackupManifest => ({
    ...newManifest({
      clusterName: "c",
      type,
      source: { name: "node1", host: "127.0.0.1", port: 1 },
      compression: "gzip",
      startedAt: new Date(startedAt),
    }),
    status: "completed",
    reference,
  });

  test("a verification that waited for the full's lock while expiry let the full go is refused, and writes no failed verification", async () => {
    const repository = new Repository(await tempHome("locks-expiry-race"), null);
    await repository.ensure();
    const full = manifest("full", "2026-11-01T00:00:00Z", null);
    const differential = manifest("differential", "2026-11-02T00:00:00Z", full.id);
    await repository.writeManifest(full);
    await repository.writeManifest(differential);
    // Expiry holds the full: the verification of its differential waits for that lock.
    const expiry = await repository.lockBackups([full.id], { purpose: "expiry", waitMs: 0 });
    // Only the content check runs (no restore test): it needs the repository, nothing of a cluster.
    const logged: string[] = [];
    const logger = createLogger({ level: "info", destination: { write: (line: string) => void logged.push(line) } });
    const deps = { repository, logger, parallelism: 1 } as unknown as VerifyDeps;
    const verifying = verifyBackup(deps, differential.id, { restoreTest: false });
    const outcome = verifying.then(
      () => null,
      (error: unknown) => error,
    );
    await eventually(() =>
      logged.some((line) => line.includes(`waits for another holder of backup ${full.id}'s lock`)) ? true : undefined,
    );
    await repository.writeManifest({ ...full, status: "expired" });
    await expiry.release();
    expect(await outcome).toMatchObject({ code: "PRECONDITION_FAILED", message: expect.stringContaining(`${full.id}, which is expired`) });
    expect((await repository.readManifest(differential.id))?.verification).toBeUndefined();
    expect(await repository.locks.holder(differential.id)).toBeNull();
  });

  test("the service's stop (waitForIdle) waits for a verification under way, so its scratch node is removed before the service goes", async () => {
    const repository = new Repository(await tempHome("locks-idle"), null);
    await repository.ensure();
    const full = manifest("full", "2026-11-01T00:00:00Z", null);
    await repository.writeManifest(full);
    const logger = createLogger({ level: "silent" });
    // Events are not under test here: a sink.
    const deps = { repository, logger, parallelism: 1, events: { emit: () => Promise.resolve() } } as unknown as BackupServiceDeps;
    const service = new BackupService(deps);
    // Another holder of the backup's lock keeps the verification under way until it lets go.
    const other = await repository.lockBackups([full.id], { purpose: "restore", waitMs: 0 });
    const verifying = service.verify(full.id, { restoreTest: false });
    let idle = false;
    const stopping = service.waitForIdle().then(() => (idle = true));
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(idle).toBe(false);
    await other.release();
    await stopping;
    // Idle only once the verification was done: its result is written.
    expect((await repository.readManifest(full.id))?.verification).toMatchObject({ contentOk: true });
    await verifying;
  });
});
