import { expect } from "@jest/globals";
import { mkdtemp, readFile, readdir, stat, symlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { writeFileAtomic, writeStreamAtomic } from "../../src/nodes/local/local-files";
import { createOwnedFile } from "../../src/util/owned-files";
import { projectRoot } from "../../src/util/project-root";

/**
 * Root writing for the PostgreSQL user into a directory that user can write
 * (a data directory, the archive's wal/): a name there may be a symlink that
 * user planted, pointing at a root-owned file. Nothing may be written
 * through it, nor chowned through it.
 */
const postgresUser = { uid: 4242, gid: 4243, name: "postgres" };
const asRoot = process.getuid?.() === 0 ? test : test.skip;

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
    await writeFileAtomic(file, "primary_conninfo = ''\n", { mode: 0o600, identity: postgresUser });
    await link(`${path.join(dir, "base.file")}.relevo-tmp-${process.pid}`).catch(() => undefined);
    await writeStreamAtomic(path.join(dir, "base.file"), chunks(Buffer.from("block")), {
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
    await Promise.all(contents.map((content) => writeFileAtomic(file, content, { mode: 0o600, identity: null })));
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
