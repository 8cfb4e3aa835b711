import { expect } from "@jest/globals";
import { mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { type GuardedPath, writeFileAtomic, writeStreamAtomic } from "../../src/nodes/local/local-files";
import { createOwnedFile } from "../../src/util/owned-files";
import { projectRoot } from "../../src/util/project-root";
import { LocalDriver } from "../../src/nodes/local/local-driver";
import { testNodeTls } from "../helpers/tls";
import { SERVER_LOG } from "../../src/nodes/local/node-folder";
import { resolvePostgresIdentity } from "../../src/nodes/os-user";
import { AUTO_CONF, editStoppedNodeConf } from "../../src/postgres/replication-config";
import { configKeys } from "../../src/config/config-keys";
import { ErrorCode, type RelevoError } from "../../src/errors";

/**
 * Root writing for the PostgreSQL user into a directory that user can write
 * (a data directory, the archive's wal/): a name there may be a symlink that
 * user planted, pointing at a root-owned file. Nothing may be written
 * through it, nor chowned through it.
 */
const postgresUser = { uid: 4242, gid: 4243, name: "postgres" };
const asRoot = process.getuid?.() === 0 ? test : test.skip;

/** A file as local-files takes it: its directory the anchor (these tests plant links at the last component). */
function at(file: string): GuardedPath {
  return { anchor: path.dirname(file), below: [path.basename(file)] };
}

function chunks(...buffers: Buffer[]): AsyncIterable<Buffer> {
  return Readable.from(buffers);
}

async function plantedLink(): Promise<{ dir: string; victim: string; link: (at: string) => Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "owned-files-"));
  const victim = path.join(dir, "root-only");
  await writeFile(victim, "root's secret", { mode: 0o600 });
  return { dir, victim, link: (at) => symlink(victim, at) };
}

describe("root never writes or chowns through a symlink in a directory the PostgreSQL user can write", () => {
  asRoot("a temp name planted as a symlink: the file is written, the link's target is neither written nor given away", async () => {
    const { dir, victim, link } = await plantedLink();
    const file = path.join(dir, "postgresql.auto.conf");
    await link(`${file}.relevo-tmp-${process.pid}`);
    await writeFileAtomic(at(file), "primary_conninfo = ''\n", { mode: 0o600, identity: postgresUser });
    await link(`${path.join(dir, "base.file")}.relevo-tmp-${process.pid}`).catch(() => undefined);
    await writeStreamAtomic(at(path.join(dir, "base.file")), chunks(Buffer.from("block")), {
      mode: 0o600,
      identity: postgresUser,
      durable: false,
    });
    expect(await readFile(victim, "utf8")).toBe("root's secret");
    expect(await stat(victim)).toMatchObject({ uid: 0, gid: 0 });
    expect(await readFile(file, "utf8")).toBe("primary_conninfo = ''\n");
    expect(await stat(file)).toMatchObject({ uid: 4242, gid: 4243 });
    expect(await stat(path.join(dir, "base.file"))).toMatchObject({ uid: 4242, gid: 4243 });
  });

  test("two writes of one file at once: both succeed, and the file holds one of them whole", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "owned-files-"));
    const file = path.join(dir, "postgresql.auto.conf");
    const contents = Array.from({ length: 8 }, (_, i) => `write ${i}\n`.repeat(1000));
    await Promise.all(contents.map((content) => writeFileAtomic(at(file), content, { mode: 0o600, identity: null })));
    expect(contents).toContain(await readFile(file, "utf8"));
    expect((await readdir(dir)).filter((name) => name.includes("relevo-tmp"))).toEqual([]);
  });

  asRoot("a new file (the archive's timeline placeholder) is never created through a symlink at its name", async () => {
    const { dir, victim, link } = await plantedLink();
    const placeholder = path.join(dir, "000000020000000000000005.partial");
    await link(placeholder);
    await expect(createOwnedFile(placeholder, "", { mode: 0o600, owner: postgresUser })).rejects.toMatchObject({ code: "EEXIST" });
    expect(await stat(victim)).toMatchObject({ uid: 0, gid: 0 });
  });

  test("src/ chowns only through a handle: no chown or lchown by path outside src/util/owned-files.ts", async () => {
    const offenders: string[] = [];
    const walk = async (dir: string): Promise<void> => {
      for (const entry of await readdir(dir, { withFileTypes: true })) {
        const full = path.join(dir, entry.name);
        if (entry.isDirectory() && entry.name !== "generated") await walk(full);
        else if (entry.name.endsWith(".ts") && !full.endsWith(path.join("util", "owned-files.ts"))) {
          // A chown by path: fs's chown/lchown (promises, callback or Sync), or the shell's.
          if (/\b(?<![.\w])l?chown(Sync)?\s*\(|["'`]chown\b/.test(await readFile(full, "utf8")))
            offenders.push(path.relative(projectRoot(), full));
        }
      }
    };
    await walk(path.join(projectRoot(), "src"));
    expect(offenders).toEqual([]);
  });
});

/**
 * Root reading, and working below, a node's folder: the PostgreSQL user owns
 * `nodes/<name>` and everything in it, so any name there (the last one, or
 * `data` itself) may be a symlink it planted at a root-only file such as
 * secrets.json. Nothing is read, quoted, written or removed through it.
 */
describe("root never follows a symlink below a local node's folder", () => {
  const secret = "token_key=the-key-that-mints-operator-tokens";
  const node = { name: "n1", host: "127.0.0.1", port: 5432 };

  async function nodeHome(): Promise<{ home: string; data: string; victim: string; driver: LocalDriver }> {
    const home = await mkdtemp(path.join(os.tmpdir(), "guarded-node-"));
    const data = path.join(home, "nodes", node.name, "data");
    await mkdir(data, { recursive: true });
    const victim = path.join(home, "secrets.json");
    await writeFile(victim, `{\n${secret}\n}\n`, { mode: 0o600 });
    return {
      home,
      data,
      victim,
      driver: new LocalDriver({ home, pgBinDir: configKeys.pgBinDir.default, pgOsUser: "postgres", tls: await testNodeTls() }),
    };
  }

  /** Every regular file below `dir`, with its content. */
  async function contents(dir: string): Promise<string[]> {
    const found: string[] = [];
    for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
      if (entry.isFile()) found.push(await readFile(path.join(entry.parentPath, entry.name), "utf8"));
    }
    return found;
  }

  asRoot(
    "a symlink at postgresql.auto.conf: editing the stopped node's settings refuses, and the target's lines stay out of it",
    async () => {
      const { data, victim, driver } = await nodeHome();
      await symlink(victim, path.join(data, AUTO_CONF));
      await expect(editStoppedNodeConf(driver, node, { primary_slot_name: "relevo_n1" })).rejects.toMatchObject({
        code: ErrorCode.DataDirNotOurs,
      });
      await expect(driver.readSmallFile(node, AUTO_CONF, 1 << 20)).rejects.toMatchObject({ code: ErrorCode.DataDirNotOurs });
      expect((await contents(data)).join("\n")).not.toContain(secret);
      expect(await readFile(victim, "utf8")).toContain(secret);
    },
  );

  asRoot("a symlink at the server log: a failed start's error does not quote the target", async () => {
    const { home, victim, driver } = await nodeHome();
    await symlink(victim, path.join(home, "nodes", node.name, SERVER_LOG));
    // An empty data directory: pg_ctl fails, and the error is built from the log's tail.
    const failure = await driver.start(node, { timeoutMs: 2000 }).catch((error: unknown) => error as RelevoError);
    expect(failure).toMatchObject({ code: ErrorCode.CommandFailed });
    expect(failure?.message).not.toContain(secret);
    expect(failure?.message).toContain("server log not read");
  });

  asRoot("a data file swapped for a symlink after a backup listed it: the backup's readers refuse it", async () => {
    const { data, victim, driver } = await nodeHome();
    await mkdir(path.join(data, "base", "1"), { recursive: true });
    await symlink(victim, path.join(data, "base", "1", "1259"));
    const refused = { code: ErrorCode.DataDirNotOurs };
    const read: Buffer[] = [];
    const options = { chunkSize: 8192, inFlight: 2 };
    const keep = (chunk: Buffer) => Promise.resolve(void read.push(Buffer.from(chunk)));
    await expect(driver.readChunks(node, "base/1/1259", options, keep)).rejects.toMatchObject(refused);
    await expect(driver.readRanges(node, "base/1/1259", [{ offset: 0, length: 100 }], options, keep)).rejects.toMatchObject(refused);
    await expect(driver.openRead(node, "base/1/1259")).rejects.toMatchObject(refused);
    expect(read).toEqual([]);
    expect(await driver.listFiles(node, "base")).toMatchObject([{ path: "base/1" }, { path: "base/1/1259", type: "symlink" }]);
  });

  asRoot("`data` replaced by a symlink to another directory: file work refuses, and nothing is written or removed there", async () => {
    const { home, data, driver } = await nodeHome();
    const elsewhere = path.join(home, "elsewhere");
    await mkdir(elsewhere);
    await writeFile(path.join(elsewhere, "recovery.signal"), "");
    await rm(data, { recursive: true });
    await symlink(elsewhere, data);
    const refused = { code: ErrorCode.DataDirNotOurs };
    await expect(driver.writeFile(node, "standby.signal", "")).rejects.toMatchObject(refused);
    await expect(driver.writeFile(node, "relevo.fence", "", { fresh: true })).rejects.toMatchObject(refused);
    await expect(driver.removeFiles(node, ["recovery.signal"])).rejects.toMatchObject(refused);
    await expect(driver.readFile(node, "recovery.signal")).rejects.toMatchObject(refused);
    await expect(driver.listFiles(node, ".")).rejects.toMatchObject(refused);
    expect(await readdir(elsewhere)).toEqual(["recovery.signal"]);
    // The node's folder itself a link: refused the same way.
    await rm(path.join(home, "nodes", node.name), { recursive: true });
    await symlink(elsewhere, path.join(home, "nodes", node.name));
    await expect(driver.writeFile(node, "standby.signal", "")).rejects.toMatchObject(refused);
    expect(await readdir(elsewhere)).toEqual(["recovery.signal"]);
  });

  asRoot("plain directories: the same calls work, and missing directories on the way are made for the PostgreSQL user", async () => {
    const { data, driver } = await nodeHome();
    await driver.writeFile(node, "base/1/PG_VERSION", "15\n");
    expect(await driver.readFile(node, "base/1/PG_VERSION")).toEqual(Buffer.from("15\n"));
    expect((await driver.listFiles(node, "base")).map((entry) => [entry.path, entry.type])).toEqual([
      ["base/1", "directory"],
      ["base/1/PG_VERSION", "file"],
    ]);
    expect(await stat(path.join(data, "base"))).toMatchObject({ uid: resolvePostgresIdentity("postgres")?.uid });
    await driver.removeFiles(node, ["base"]);
    expect(await readdir(data)).toEqual([]);
  });
});
