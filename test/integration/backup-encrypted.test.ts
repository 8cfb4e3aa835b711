import { expect } from "@jest/globals";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { readdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { buffer } from "node:stream/consumers";
import { promisify } from "node:util";
import type { BackupManifest } from "../../src/backup/manifest";
import { ErrorCode } from "../../src/errors";
import type { NodeRef } from "../../src/nodes/node-driver";
import { DirectoryStore } from "../../src/repository/directory-store";
import { HEADER_SIZE } from "../../src/repository/object-codec";
import { RepositoryStore } from "../../src/repository/repository-store";
import { projectRoot } from "../../src/util/project-root";
import { backupHelpers, contentObjectFile } from "../helpers/backups";
import { cliEnvFor } from "../helpers/cli-env";
import { tempHome } from "../helpers/home";
import { freePort } from "../helpers/ports";
import { useTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";

const run = promisify(execFile);
const BIN = path.join(projectRoot(), "bin/relevo");
const PASS = "the encrypted backups test's cipher pass";
const WRONG_PASS = "not the pass this repository was made with";
/** In a table's rows, so in its data files and the WAL: no object of the repository may hold it in its raw bytes. */
const KNOWN = `relevo-plaintext-${randomBytes(8).toString("hex")}`;

/** Every file under `root`, as paths relative to it. */
async function filesUnder(root: string): Promise<string[]> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true });
  return entries.filter((entry) => entry.isFile()).map((entry) => path.relative(root, path.join(entry.parentPath, entry.name)));
}

/** The files under `root` whose raw bytes contain `text`. */
async function filesContaining(root: string, text: string): Promise<string[]> {
  const found: string[] = [];
  for (const file of await filesUnder(root)) if ((await readFile(path.join(root, file))).includes(Buffer.from(text))) found.push(file);
  return found.sort();
}

/**
 * An encrypted repository (RELEVO_REPO1_CIPHER_PASS) on a real cluster:
 * full, differential and incremental backups written encrypted, each under
 * its own data key, the WAL archive and its summaries under the archive's;
 * restored exactly, to a point between backups too; verified, and a damaged
 * byte found; no plaintext in any object; a wrong pass refused by the CLI,
 * nothing changed; the pass in no log line or event.
 */
describe("an encrypted repository", () => {
  const logged: string[] = [];
  const cluster = useTestCluster(
    "encrypted",
    // Stored uncompressed: only the encryption stands between a row's bytes and the objects' (see the control below).
    { backupCompression: "none", logLevel: "debug" },
    { env: { RELEVO_REPO1_CIPHER_PASS: PASS }, logDestination: { write: (line: string) => void logged.push(line) } },
  );
  const helpers = backupHelpers(cluster);
  const primary = (): NodeRef => cluster.service.nodes[0]!;
  const sql = <T = Record<string, unknown>>(text: string) => sqlOn<T>(primary(), cluster.service.secrets, text);
  const backups: Record<string, BackupManifest> = {};
  const restored: NodeRef[] = [];
  let rowsAtPoint = 0;

  afterAll(async () => {
    for (const node of restored) await cluster.service.driver.destroy(node).catch(() => undefined);
  });

  const take = async (type: "full" | "differential" | "incremental"): Promise<BackupManifest> => {
    const manifest = await (await cluster.service.backups.start(type)).done;
    expect(manifest).toMatchObject({ type, status: "completed" });
    return manifest;
  };

  test("full, differential and incremental are written encrypted, each under a data key of its own", async () => {
    await sql("CREATE TABLE notes (id serial PRIMARY KEY, body text)");
    await sql(`INSERT INTO notes (body) SELECT '${KNOWN} ' || g FROM generate_series(1, 2000) g`);
    await sql("CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g");
    backups.full = await take("full");

    // A point between the full and the differential: a PITR there replays WAL from the encrypted archive.
    await sql(`INSERT INTO notes (body) SELECT 'before the point ' || g FROM generate_series(1, 500) g`);
    rowsAtPoint = (await sql<{ n: number }>("SELECT count(*)::int AS n FROM notes"))[0]!.n;
    await helpers.quietPoint("between-backups");
    await sql(`INSERT INTO notes (body) SELECT 'after the point ' || g FROM generate_series(1, 500) g`);
    await sql("UPDATE bulk SET v = v || '!' WHERE id <= 3000");
    backups.diff = await take("differential");
    await sql("UPDATE bulk SET v = v || '?' WHERE id BETWEEN 5000 AND 6000");
    await sql(`INSERT INTO notes (body) VALUES ('${KNOWN} in the incremental')`);
    backups.incr = await take("incremental");
    expect(backups.diff).toMatchObject({ reference: backups.full.id, changesFrom: "wal" });
    expect(backups.incr).toMatchObject({ reference: backups.diff.id, changesFrom: "wal" });

    const { repository } = cluster.service;
    const ids = Object.values(backups).map((manifest) => manifest.dataKeyId);
    expect(ids.every((id) => /^[0-9a-f]{32}$/.test(id ?? ""))).toBe(true);
    expect(new Set(ids).size).toBe(3);
    // keys/archive holds the id sealed: the service's keyring reads it.
    const archiveKeyId = (await repository.archiveKey())!.id.toString("hex");
    expect(ids).not.toContain(archiveKeyId);
    // Every object (not the keys, not pg_receivewal's own directory) is encrypted, under the key its place says.
    const objects = (await filesUnder(repository.root)).filter((file) => !file.startsWith("keys/") && !file.startsWith("wal/"));
    expect(objects.some((file) => file.startsWith("archive/"))).toBe(true);
    expect(objects.some((file) => file.startsWith("wal-summary/"))).toBe(true);
    for (const file of objects) {
      const header = (await readFile(path.join(repository.root, file))).subarray(0, HEADER_SIZE);
      const backupId = /^(?:manifests|backups)\/([^/]+)/.exec(file)?.[1];
      const expected = backupId ? Object.values(backups).find((manifest) => manifest.id === backupId)?.dataKeyId : archiveKeyId;
      expect({ file, mode: header[5], key: header.subarray(12, 28).toString("hex") }).toEqual({ file, mode: 1, key: expected });
    }
  });

  test("the chain restored to a quiet point after its last backup matches the source in pg_dumpall", async () => {
    await helpers.quietPoint("encrypted-quiet");
    const target: NodeRef = { name: "encrypted-copy", host: primary().host, port: await freePort() };
    restored.push(target);
    await cluster.service.backups.restore({
      backupId: backups.incr!.id,
      target,
      recoveryTarget: { kind: "name", name: "encrypted-quiet" },
    });
    const [source, copy] = [await helpers.comparableDump(primary()), await helpers.comparableDump(target)];
    expect(source.some((line) => line.includes(KNOWN))).toBe(true);
    expect(copy).toEqual(source);
  });

  test("a point in time between the full and the differential restores exactly, its WAL read from the encrypted archive", async () => {
    const target: NodeRef = { name: "encrypted-pitr", host: primary().host, port: await freePort() };
    restored.push(target);
    const copy = await cluster.service.backups.restore({ target, recoveryTarget: { kind: "name", name: "between-backups" } });
    expect(copy.manifest.id).toBe(backups.full!.id);
    const count = async (node: NodeRef, where: string): Promise<number> =>
      (await sqlOn<{ n: number }>(node, cluster.service.secrets, `SELECT count(*)::int AS n FROM notes WHERE ${where}`))[0]!.n;
    expect(await count(target, "true")).toBe(rowsAtPoint);
    expect(await count(target, "body LIKE 'before the point %'")).toBe(500);
    expect(await count(target, "body LIKE 'after the point %'")).toBe(0);
  });

  test("verify passes; a flipped byte in an encrypted object is REPOSITORY_CORRUPT, and verify names the file", async () => {
    const { repository, backups: service } = cluster.service;
    // The incremental's verification reads its whole chain: the full, the differential and its own content.
    expect((await service.verify(backups.incr!.id, { restoreTest: false })).verification).toMatchObject({ contentOk: true, badFiles: [] });
    const manifest = backups.full!;
    const victim = manifest.files.find((entry) => entry.type === "file" && entry.stored && entry.stored.offset === undefined)!;
    const file = contentObjectFile(repository, manifest.id, victim.stored!.path);
    const original = await readFile(file);
    const damaged = Buffer.from(original);
    // In the first chunk's ciphertext, past the header and the chunk's nonce.
    damaged[HEADER_SIZE + 12 + 100] = damaged[HEADER_SIZE + 12 + 100]! ^ 0x01;
    await writeFile(file, damaged);
    try {
      const key = path.relative(repository.root, file);
      await expect(repository.objects.getStream(key).then((stream) => buffer(stream))).rejects.toMatchObject({
        code: ErrorCode.RepositoryCorrupt,
      });
      const verified = await service.verify(manifest.id, { restoreTest: false });
      expect(verified.verification).toMatchObject({ contentOk: false });
      expect(verified.verification!.badFiles).toContain(victim.path);
    } finally {
      await writeFile(file, original);
    }
  }, 300_000);

  test("no object holds the table's text in its raw bytes; the same objects stored without a pass do", async () => {
    const { repository } = cluster.service;
    const root = repository.root;
    // pg_receivewal's own directory (raw WAL, the PostgreSQL user's) is not an object, and leaves the repository
    // with the spool; every object is under the other prefixes.
    const exposed = (await filesContaining(root, KNOWN)).filter((file) => !file.startsWith("wal/"));
    expect(exposed).toEqual([]);

    // The control: the archive's and the backups' objects, read through the keys and stored again unencrypted (what
    // a repository without a pass holds), do show it; the grep above could find it.
    const plainRoot = path.join(await tempHome("encrypted-control"), "repository");
    const plain = new RepositoryStore(new DirectoryStore(plainRoot));
    for (const prefix of ["archive/", "backups/"]) {
      for (const info of await repository.objects.list(prefix))
        await plain.putStream(info.key, await repository.objects.getStream(info.key));
    }
    const shown = await filesContaining(plainRoot, KNOWN);
    expect(shown.some((file) => file.startsWith("archive/"))).toBe(true);
    expect(shown.some((file) => file.startsWith(`backups/${backups.full!.id}/`))).toBe(true);
  }, 300_000);

  test("relevo restore with a wrong pass, or none, fails with REPOSITORY_ACCESS_DENIED naming the variable, and changes nothing", async () => {
    const to = path.join(cluster.config.home, "cli-wrong-pass");
    const nodesBefore = await readdir(path.join(cluster.config.home, "nodes"));
    const keysBefore = await filesUnder(path.join(cluster.service.repository.root, "keys"));
    for (const pass of [WRONG_PASS, undefined]) {
      const env = cliEnvFor(cluster.config, pass === undefined ? {} : { RELEVO_REPO1_CIPHER_PASS: pass });
      if (pass === undefined) delete env.RELEVO_REPO1_CIPHER_PASS;
      const outcome = await run(process.execPath, [BIN, "restore", "--to", to, "--port", String(await freePort())], { env }).then(
        ({ stdout, stderr }) => ({ status: 0, stdout, stderr }),
        (error: { code: number; stdout: string; stderr: string }) => ({ status: error.code, stdout: error.stdout, stderr: error.stderr }),
      );
      expect(outcome.status).toBe(77); // EX_NOPERM
      expect(outcome.stderr).toContain(ErrorCode.RepositoryAccessDenied);
      expect(outcome.stderr).toContain("RELEVO_REPO1_CIPHER_PASS");
      for (const text of [outcome.stdout, outcome.stderr]) {
        expect(text).not.toContain(PASS);
        expect(text).not.toContain(WRONG_PASS);
      }
      expect(existsSync(to)).toBe(false);
      expect(existsSync(`${to}.restore.lock`)).toBe(false);
    }
    expect(await readdir(path.join(cluster.config.home, "nodes"))).toEqual(nodesBefore);
    expect(await filesUnder(path.join(cluster.service.repository.root, "keys"))).toEqual(keysBefore);
  });

  test("the pass is in no log line and no event", async () => {
    // The service logged at debug level all along (its start, the archiver, the backups and restores).
    expect(logged.length).toBeGreaterThan(10);
    expect(logged.filter((line) => line.includes(PASS))).toEqual([]);
    const { redis, keys } = cluster.service;
    const events = JSON.stringify(await redis.xrange(keys.events, "-", "+"));
    expect(events).toContain("backup:completed");
    expect(events).not.toContain(PASS);
    const stored = await sqlOn<{ text: string }>(
      primary(),
      cluster.service.secrets,
      "SELECT coalesce(string_agg(message || data::text, ''), '') AS text FROM events",
      [],
      "relevo",
    );
    expect(stored[0]!.text).not.toContain(PASS);
  });
});
