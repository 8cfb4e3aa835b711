import { expect } from "@jest/globals";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdir, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { BackupLocks, type HeldBackupLocks, type LockHolder } from "../../src/storage/backup-locks";
import { projectRoot } from "../../src/util/project-root";
import { tempHome } from "../helpers/home";
import { eventually } from "../helpers/service";

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
    `new BackupLocks(${JSON.stringify(root)}).acquire([${JSON.stringify(ID)}], { purpose: "verification" })` +
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
    const acquiring = locks.acquire([ID], { purpose: "expiry", pollMs: 50, onWait: (_id, holder) => waitedFor.push(holder) });
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
    const first = await locks.acquire([other, ID], { purpose: "restore" });
    expect(first.ids).toEqual([ID, other]);
    let second: HeldBackupLocks | null = null;
    const acquiring = locks.acquire([ID], { purpose: "verification", pollMs: 20 }).then((locked) => (second = locked));
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
      host: os.hostname(),
      pid: process.pid,
      processStart: "1",
      purpose: "verification",
      since: new Date(0).toISOString(),
      token: "dead",
    };
    await writeFile(path.join(locks.directory, `${ID}.lock`), JSON.stringify(stale));
    const held = await locks.acquire([ID], { purpose: "expiry" });
    expect(await locks.holder(ID)).toMatchObject({ purpose: "expiry" });
    await held.release();
  });
});
