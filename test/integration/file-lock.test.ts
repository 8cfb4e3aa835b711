import { expect } from "@jest/globals";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { access, stat, utimes, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { acquireFileLock, lockHolder, thisHost, type HeldFileLock, type LockHolder } from "../../src/storage/file-lock";
import { projectRoot } from "../../src/util/project-root";
import { tempHome } from "../helpers/home";
import { eventually } from "../helpers/service";

/**
 * The lock files Relevo takes on its host (a restore's claim of its target,
 * the CAs' and certificates' records, S3 uploads' registry): held across
 * processes and hosts sharing a directory, broken once their holder is
 * gone. (The repository's backup locks are Redis keys: repository-locks.test.ts.)
 */
const MODULE = path.join(projectRoot(), "dist/src/storage/file-lock.js");

async function lockFileIn(label: string): Promise<string> {
  return path.join(await tempHome(label), "the.lock");
}

/** Another process holding the lock file, as the CLI or a second service instance does: the built module (dist/) takes it, says so, and holds it until killed. */
async function holderProcess(file: string): Promise<ChildProcess> {
  const script =
    `require(${JSON.stringify(MODULE)}).acquireFileLock(${JSON.stringify(file)}, { purpose: "verification", waitMs: 0 })` +
    `.then(() => { console.log("held"); setInterval(() => {}, 1000); });`;
  const child = spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "inherit"] });
  const [line] = (await once(createInterface({ input: child.stdout }), "line")) as [string];
  expect(line).toBe("held");
  return child;
}

describe("lock files: across processes, never left held by a crash", () => {
  test("held by another process: the next holder waits, naming it; that process killed (SIGKILL), the lock is taken at once", async () => {
    const file = await lockFileIn("file-lock-crash");
    const child = await holderProcess(file);
    const waitedFor: LockHolder[] = [];
    let held: HeldFileLock | null = null;
    const acquiring = acquireFileLock(file, { purpose: "expiry", waitMs: 20_000, pollMs: 50, onWait: (holder) => waitedFor.push(holder) });
    void acquiring.then((locked) => (held = locked));
    try {
      await eventually(() => (waitedFor.length > 0 ? true : undefined), { timeoutMs: 10000 });
      expect(waitedFor[0]).toMatchObject({ pid: child.pid, host: os.hostname(), purpose: "verification" });
      expect(held).toBeNull();
      child.kill("SIGKILL");
      await once(child, "exit");
      const taken = await acquiring;
      expect(await lockHolder(file)).toMatchObject({ pid: process.pid, purpose: "expiry" });
      await taken.release();
      expect(await lockHolder(file)).toBeNull();
    } finally {
      child.kill("SIGKILL");
    }
  });

  test("a lock naming a live pid whose process started at another time (the pid was reused) is a dead holder's", async () => {
    const file = await lockFileIn("file-lock-reused");
    const stale: LockHolder = {
      ...(await thisHost()),
      pid: process.pid,
      processStart: "1",
      purpose: "verification",
      since: new Date(0).toISOString(),
      token: "dead",
    };
    await writeFile(file, JSON.stringify(stale));
    const held = await acquireFileLock(file, { purpose: "expiry", waitMs: 0 });
    expect(await lockHolder(file)).toMatchObject({ purpose: "expiry" });
    await held.release();
  });
});

/** A lock file as a holder on another host leaves it: that host's name, its refresh interval. */
async function remoteLock(file: string, refreshMs: number): Promise<void> {
  const holder: LockHolder = {
    host: "elsewhere.invalid",
    pid: 4242,
    processStart: "77",
    purpose: "restore into copy1",
    since: new Date().toISOString(),
    token: "remote",
    refreshMs,
  };
  await writeFile(file, JSON.stringify(holder));
}

describe("lock files: bounded waits, holders on other hosts, racing breakers", () => {
  test("a holder on another host that keeps touching its lock is waited for until the deadline, then LOCK_HELD names the file and holder", async () => {
    const file = await lockFileIn("file-lock-remote-live");
    await remoteLock(file, 100);
    // That host's holder, alive: it touches the file more often than its refresh interval.
    const touching = setInterval(() => void utimes(file, new Date(), new Date()).catch(() => undefined), 50);
    const waitedFor: LockHolder[] = [];
    try {
      await expect(
        acquireFileLock(file, { purpose: "verification", waitMs: 1000, pollMs: 20, onWait: (holder) => waitedFor.push(holder) }),
      ).rejects.toMatchObject({
        code: "LOCK_HELD",
        message: expect.stringContaining(`lock ${file} is held by pid 4242 on elsewhere.invalid, restore into copy1`),
        details: { lockFile: file, holder: { host: "elsewhere.invalid", pid: 4242 } },
      });
    } finally {
      clearInterval(touching);
    }
    expect(waitedFor).toHaveLength(1);
    expect(await lockHolder(file)).toMatchObject({ token: "remote" });
  });

  test("a holder on another host that stopped touching its lock is gone after three of its intervals: the lock is broken", async () => {
    const file = await lockFileIn("file-lock-remote-dead");
    await remoteLock(file, 100);
    const started = Date.now();
    const held = await acquireFileLock(file, { purpose: "expiry", waitMs: 10_000, pollMs: 20 });
    // Never broken before three silent intervals as this process saw them.
    expect(Date.now() - started).toBeGreaterThanOrEqual(300);
    expect(await lockHolder(file)).toMatchObject({ pid: process.pid, purpose: "expiry" });
    await held.release();
  });

  test("tried once per run (waitMs 0), a holder on another host that stopped touching its lock is broken on a later run", async () => {
    const file = await lockFileIn("file-lock-remote-dead-once");
    await remoteLock(file, 100);
    await expect(acquireFileLock(file, { purpose: "expiry", waitMs: 0 })).rejects.toMatchObject({ code: "LOCK_HELD" });
    // The next run, more than three of its refresh intervals later: the file never changed meanwhile.
    await new Promise((resolve) => setTimeout(resolve, 400));
    const held = await acquireFileLock(file, { purpose: "expiry", waitMs: 0 });
    expect(await lockHolder(file)).toMatchObject({ pid: process.pid, purpose: "expiry" });
    await held.release();
  });

  test("a holder with this host's name but another pid namespace or boot is judged by its refreshes, never by a pid here", async () => {
    const file = await lockFileIn("file-lock-other-namespace");
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
    await writeFile(file, JSON.stringify(holder));
    await expect(acquireFileLock(file, { purpose: "expiry", waitMs: 0 })).rejects.toMatchObject({ code: "LOCK_HELD" });
    expect(await lockHolder(file)).toMatchObject({ token: "ns" });
  });

  test("tried once (waitMs 0), a held lock is LOCK_HELD at once; a holder touches its lock while it holds it", async () => {
    const file = await lockFileIn("file-lock-refresh");
    const held = await acquireFileLock(file, { purpose: "restore", waitMs: 0, refreshMs: 50 });
    await expect(acquireFileLock(file, { purpose: "expiry", waitMs: 0 })).rejects.toMatchObject({ code: "LOCK_HELD" });
    await utimes(file, new Date(0), new Date(0));
    await eventually(async () => ((await stat(file)).mtimeMs > Date.now() - 60_000 ? true : undefined), { timeoutMs: 5000 });
    await held.release();
    expect(await lockHolder(file)).toBeNull();
  });

  test("many processes race to break one dead holder's lock, again after each holder dies: exactly one holder at any time", async () => {
    const root = await tempHome("file-lock-race");
    const file = path.join(root, "the.lock");
    const gone = spawn("true");
    await once(gone, "exit");
    const dead: LockHolder = { ...(await thisHost()), pid: gone.pid!, processStart: "", purpose: "crashed", since: "", token: "dead" };
    await writeFile(file, JSON.stringify(dead));
    const go = path.join(root, "go");
    const inside = path.join(root, "inside");
    // Each takes the lock, proves it is alone in it (an exclusive marker file), then dies holding it: the rest race
    // to break a dead holder's lock once more.
    const script =
      `const fs = require("fs"); const { acquireFileLock } = require(${JSON.stringify(MODULE)});` +
      `console.log("ready");` +
      `const start = () => fs.existsSync(${JSON.stringify(go)}) ? take() : setTimeout(start, 5);` +
      `const take = () => acquireFileLock(${JSON.stringify(file)}, { purpose: "race", waitMs: 60000, pollMs: 1 }).then(() => {` +
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
      const held = await acquireFileLock(file, { purpose: "after the race", waitMs: 10_000 });
      await held.release();
      await expect(access(`${file}.break`)).rejects.toMatchObject({ code: "ENOENT" });
    } finally {
      for (const child of children) child.kill("SIGKILL");
    }
  });
});
