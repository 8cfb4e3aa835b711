import { expect } from "@jest/globals";
import { spawn } from "node:child_process";
import { chmod, chown, lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { ErrorCode } from "../../src/errors";
import { LocalDriver } from "../../src/nodes/local/local-driver";
import { trustOnlyTlsSource } from "../../src/tls/node-tls";
import { resolvePostgresIdentity, type OsIdentity } from "../../src/nodes/os-user";
import { configKeys } from "../../src/config/config-keys";

/**
 * Root removing, recursively, below a node's folder, which the PostgreSQL
 * user owns (review 13, H1): that user may swap a directory being removed
 * for a symlink at any moment. Root must remove what is there, and never
 * list nor unlink what a link points to.
 */
const asRoot = process.getuid?.() === 0 ? test : test.skip;
const node = { name: "n1", host: "127.0.0.1", port: 5432 };
const homes: string[] = [];

afterEach(async () => {
  // Every swapper has exited by now (each test awaits its own): nothing moves under this removal.
  for (const home of homes.splice(0)) await rm(home, { recursive: true, force: true });
});

/**
 * Runs as the PostgreSQL user (started as root, it drops to that user itself: CI's Node lives in root's
 * home, which that user cannot reach to run it): for `seconds`, swaps `<dir>/<name>` (a
 * directory it owns) for a symlink to `victim` and back, then prints how many
 * times it put the link in place. Root's removal of `<dir>/<name>` meets the
 * link at any step of its walk.
 */
const SWAPPER = `
const fs = require("fs");
const [dir, name, victim, seconds, uid, gid] = process.argv.slice(1);
process.setgroups([]);
process.setgid(Number(gid));
process.setuid(Number(uid));
const at = dir + "/" + name, hold = dir + "/.held";
const end = process.hrtime.bigint() + BigInt(Number(seconds) * 1e9);
const spin = () => { const until = process.hrtime.bigint() + 100000n; while (process.hrtime.bigint() < until); };
let linked = 0;
while (process.hrtime.bigint() < end) {
  spin(); // the directory in place: root's walk sees one
  try { fs.renameSync(at, hold); } catch {}
  try { fs.symlinkSync(victim, at); linked++; } catch {}
  spin(); // the link in place: a walk that goes on by name goes into the victim
  try { fs.unlinkSync(at); } catch {}
  try { fs.renameSync(hold, at); } catch {}
}
process.stdout.write(String(linked));
`;

function swapper(options: { dir: string; name: string; victim: string; seconds: number; identity: OsIdentity }): Promise<number> {
  const args = [
    options.dir,
    options.name,
    options.victim,
    String(options.seconds),
    String(options.identity.uid),
    String(options.identity.gid),
  ];
  const child = spawn(process.execPath, ["-e", SWAPPER, ...args], { stdio: ["ignore", "pipe", "inherit"] });
  let output = "";
  child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code) => (code === 0 ? resolve(Number(output)) : reject(new Error(`swapper exited with ${code}`))));
  });
}

/** A data home with node n1's folder as the driver lays it out, owned by the PostgreSQL user, and a root-only directory of 20 files. */
async function nodeHome(): Promise<{ home: string; data: string; victim: string; identity: OsIdentity; driver: LocalDriver }> {
  const identity = resolvePostgresIdentity("postgres")!;
  const home = await mkdtemp(path.join(os.tmpdir(), "guarded-removal-"));
  homes.push(home);
  await chmod(home, 0o711);
  const victim = path.join(home, "root-only");
  await mkdir(victim, { mode: 0o700 });
  for (let i = 0; i < 20; i++) await writeFile(path.join(victim, `precious-${i}`), "root's", { mode: 0o600 });
  const folder = path.join(home, "nodes", node.name);
  const data = path.join(folder, "data");
  await mkdir(data, { recursive: true, mode: 0o700 });
  await chmod(path.join(home, "nodes"), 0o755);
  for (const dir of [folder, data]) await chown(dir, identity.uid, identity.gid);
  const driver = new LocalDriver({ home, pgBinDir: configKeys.pgBinDir.default, pgOsUser: "postgres", tls: trustOnlyTlsSource("") });
  return { home, data, victim, identity, driver };
}

/** A directory the PostgreSQL user owns, holding `files` files it owns (a replication slot's state, say). */
async function ownedDirectory(dir: string, files: number, identity: OsIdentity): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chown(dir, identity.uid, identity.gid);
  for (let i = 0; i < files; i++) {
    await writeFile(path.join(dir, `state-${i}`), "slot");
    await chown(path.join(dir, `state-${i}`), identity.uid, identity.gid);
  }
}

describe("root's recursive removals below a node's folder follow no symlink the PostgreSQL user swaps in", () => {
  asRoot(
    "a slot directory swapped for a link to a root-only directory while rejoin removes it, again and again: not one of root's files goes",
    async () => {
      const { data, victim, identity, driver } = await nodeHome();
      const slots = path.join(data, "pg_replslot");
      await ownedDirectory(slots, 0, identity);
      const left = async (): Promise<number> => (await readdir(victim)).filter((name) => name.startsWith("precious-")).length;
      // Node's rm lost the first of root's files within a second or two here; 8 s of removals without a loss is the proof.
      const swaps = swapper({ dir: slots, name: "slot1", victim, seconds: 8, identity });
      let removals = 0;
      let finished = false;
      void swaps.finally(() => (finished = true));
      try {
        while (!finished && (await left()) === 20) {
          // Made through the driver (guarded too): a plain write here would itself write through the link.
          for (let i = 0; i < 5; i++) await driver.writeFile(node, `pg_replslot/slot1/state-${i}`, "slot").catch(() => undefined);
          // Errors are the race's (a name gone, a link where a directory was made); what counts is what survives.
          await driver.removeFiles(node, ["pg_replslot/slot1"]).catch(() => undefined);
          removals += 1;
        }
      } finally {
        const linked = await swaps;
        console.log(`${removals} removals while the link was put in place ${linked} times; ${await left()} of root's 20 files left`);
        expect(linked).toBeGreaterThan(1000);
      }
      expect((await readdir(victim)).sort()).toEqual(Array.from({ length: 20 }, (_, i) => `precious-${i}`).sort());
      for (const name of await readdir(victim)) expect(await readFile(path.join(victim, name), "utf8")).toBe("root's");
      // Enough removals ran into the swaps to have lost a file without the guard.
      expect(removals).toBeGreaterThan(50);
    },
    30000,
  );

  asRoot(
    "destroy removes the whole node folder (root's entries in it too), and a removal takes links out without touching their targets",
    async () => {
      const { home, data, victim, identity, driver } = await nodeHome();
      await ownedDirectory(path.join(data, "pg_replslot", "slot1"), 3, identity);
      // What root or an operator left in the folder: a root-owned directory with a root-owned directory in it.
      await mkdir(path.join(data, "restored-by-hand", "base"), { recursive: true, mode: 0o700 });
      await writeFile(path.join(data, "restored-by-hand", "base", "1259"), "root's copy");
      // Links the PostgreSQL user planted at a directory and at a file of root's.
      await symlink(victim, path.join(data, "pg_replslot", "slot2"));
      await symlink(path.join(victim, "precious-0"), path.join(data, "standby.signal"));
      await driver.removeFiles(node, ["standby.signal", "pg_replslot/slot1", "pg_replslot/slot2", "absent.signal"]);
      expect((await readdir(data)).sort()).toEqual(["pg_replslot", "restored-by-hand"]);
      expect(await readdir(path.join(data, "pg_replslot"))).toEqual([]);
      await symlink(victim, path.join(data, "pg_replslot", "slot2"));
      await driver.destroy(node);
      await expect(lstat(path.join(home, "nodes", node.name))).rejects.toMatchObject({ code: "ENOENT" });
      expect(await readdir(victim)).toHaveLength(20);
      expect(await readFile(path.join(victim, "precious-0"), "utf8")).toBe("root's");
      // An absent folder: nothing to do.
      await driver.destroy(node);
    },
  );

  asRoot("a tree deeper than any data directory is refused with DATA_DIR_NOT_OURS, and nothing beside it is touched", async () => {
    const { data, victim, driver } = await nodeHome();
    await mkdir(path.join(data, "deep", ...Array.from({ length: 140 }, () => "d")), { recursive: true });
    await writeFile(path.join(data, "beside"), "");
    await expect(driver.removeFiles(node, ["deep"])).rejects.toMatchObject({ code: ErrorCode.DataDirNotOurs });
    expect((await readdir(data)).sort()).toEqual(["beside", "deep"]);
    expect(await readdir(victim)).toHaveLength(20);
  });
});
