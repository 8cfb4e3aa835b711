import { expect } from "@jest/globals";
import { mkdir, open, readFile, readdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import type { BackupManifest } from "../../src/backup/manifest";
import { ErrorCode } from "../../src/errors";
import { HEADER_SIZE } from "../../src/repository/object-codec";
import { manifestKey } from "../../src/repository/repository-layout";
import { Repository, walSpoolDir } from "../../src/storage/repository";
import { tempHome } from "../helpers/home";
import { manifest as fixture } from "../helpers/manifest-fixture";

/** An older manifest (no filesStored) of two files, one stored whole: the summary counts it from the list it leaves out. */
const manifest = (id: string, overrides: Partial<BackupManifest> = {}): BackupManifest =>
  fixture(id, {
    fileCount: 2,
    files: [
      {
        path: "base/1/1",
        type: "file",
        size: 8192,
        mtimeMs: 0,
        stored: { path: "data/base/1/1.gz", bytes: 10, compression: "gzip", sha256: "0" },
      },
      { path: "base/1/2", type: "file", size: 8192, mtimeMs: 0 },
    ],
    ...overrides,
  });

async function freshRepository(label: string): Promise<Repository> {
  const home = await tempHome(label);
  return new Repository(path.join(home, "repository"), null, { spoolDir: walSpoolDir(home) });
}

/** A manifest as Relevo wrote it before manifests/: plain JSON in its backup's directory. */
async function writeLegacyManifest(repository: Repository, written: BackupManifest): Promise<string> {
  const file = path.join(repository.backupDir(written.id), "manifest.json");
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, JSON.stringify(written, null, 1) + "\n", { mode: 0o600 });
  return file;
}

async function mkdirFor(repository: Repository, id: string): Promise<string> {
  await mkdir(repository.backupDir(id), { recursive: true });
  return repository.backupDir(id);
}

const present = (file: string) =>
  readFile(file).then(
    () => true,
    () => false,
  );

describe("manifests are objects of the repository (manifests/<id>)", () => {
  test("writeManifest stores the manifest as the object manifests/<id>, in Relevo's stored form; readManifest reads it back", async () => {
    const repository = await freshRepository("manifest-object");
    const written = manifest("20261101T000000Z-F");
    await repository.writeManifest(written);
    expect(await repository.objects.readJson(manifestKey(repository.generation, written.id))).toEqual(written);
    // Checked chunks, not raw JSON: a flipped byte is found (below), and nothing is left under backups/.
    expect((await readFile(path.join(repository.root, "manifests", written.id))).subarray(0, 4).toString()).toBe("RLVO");
    expect(await readdir(repository.root)).toEqual(["manifests"]);
    expect(await repository.readManifest(written.id)).toEqual(written);
    expect(await repository.readManifest("20261102T000000Z-F")).toBeNull();
    // A manifest of a version this Relevo cannot read is no backup for it.
    await repository.objects.writeJson(manifestKey(repository.generation, "20261103T000000Z-F"), {
      ...manifest("20261103T000000Z-F"),
      formatVersion: 99,
    });
    expect(await repository.readManifest("20261103T000000Z-F")).toBeNull();
    expect((await repository.listManifests()).map((each) => each.id)).toEqual([written.id]);
  });

  test("a legacy backups/<id>/manifest.json without a twin is read, listed and summarised; rewritten, it becomes the object and the file goes", async () => {
    const repository = await freshRepository("manifest-legacy");
    const legacy = manifest("20261101T000000Z-F");
    const file = await writeLegacyManifest(repository, legacy);
    await repository.writeManifest(manifest("20261102T000000Z-F"));
    expect(await repository.readManifest(legacy.id)).toEqual(legacy);
    expect((await repository.listManifests()).map((each) => each.id)).toEqual([legacy.id, "20261102T000000Z-F"]);
    const summaries = await repository.listManifestSummaries();
    expect(summaries.map((each) => [each.id, each.status])).toEqual([
      [legacy.id, "completed"],
      ["20261102T000000Z-F", "completed"],
    ]);

    // A rewrite (a verification, an expiry) publishes the object, then removes the legacy file: one manifest per backup.
    await repository.writeManifest({ ...legacy, status: "expired" });
    expect(await present(file)).toBe(false);
    expect(await repository.objects.readJson(manifestKey(repository.generation, legacy.id))).toMatchObject({ status: "expired" });
    expect((await repository.listManifestSummaries()).map((each) => [each.id, each.status])).toEqual([
      [legacy.id, "expired"],
      ["20261102T000000Z-F", "completed"],
    ]);

    // Where both are (a crash between the object's put and the file's removal), the object is the manifest.
    await writeLegacyManifest(repository, { ...legacy, status: "completed" });
    expect(await repository.readManifest(legacy.id)).toMatchObject({ status: "expired" });
    expect((await repository.listManifests()).map((each) => [each.id, each.status])).toEqual([
      [legacy.id, "expired"],
      ["20261102T000000Z-F", "completed"],
    ]);
    // A legacy file that is not JSON was never a backup, as before.
    await writeFile(path.join(await mkdirFor(repository, "20261103T000000Z-F"), "manifest.json"), "{ damaged");
    expect(await repository.readManifest("20261103T000000Z-F")).toBeNull();
    expect((await repository.listManifestSummaries()).map((each) => each.id)).toEqual([legacy.id, "20261102T000000Z-F"]);
  });
});

describe("the repository's listing for the API (listManifestSummaries)", () => {
  test("a manifest is parsed once per version of its object: unchanged ones come back as they were, changed and new ones are read", async () => {
    const repository = await freshRepository("summaries");
    for (const id of ["20261101T000000Z-F", "20261102T000000Z-F"]) await repository.writeManifest(manifest(id));
    const first = await repository.listManifestSummaries();
    expect(first.map((summary) => summary.id)).toEqual(["20261101T000000Z-F", "20261102T000000Z-F"]);
    expect(first[0]).not.toHaveProperty("files");
    expect(first[0]).toMatchObject({ filesStored: 1, blocksStored: 0, status: "completed" });

    await repository.writeManifest(manifest("20261102T000000Z-F", { status: "expired" }));
    await repository.writeManifest(manifest("20261103T000000Z-F"));
    const second = await repository.listManifestSummaries();
    // The same object: the unchanged manifest was not read again.
    expect(second[0]).toBe(first[0]);
    expect(second.map((summary) => [summary.id, summary.status])).toEqual([
      ["20261101T000000Z-F", "completed"],
      ["20261102T000000Z-F", "expired"],
      ["20261103T000000Z-F", "completed"],
    ]);

    // Rewritten by another writer (not this Repository), twice to the same size within the second, and removed:
    // each is seen on the next listing (a version is the object's etag, not its size and time).
    const key = manifestKey(repository.generation, "20261101T000000Z-F");
    await repository.objects.writeJson(key, manifest("20261101T000000Z-F", { error: "edit1" }));
    expect((await repository.listManifestSummaries())[0]).toMatchObject({ error: "edit1" });
    await repository.objects.writeJson(key, manifest("20261101T000000Z-F", { error: "edit2" }));
    await repository.objects.store.delete([manifestKey(repository.generation, "20261103T000000Z-F")]);
    const third = await repository.listManifestSummaries();
    expect(third.map((summary) => [summary.id, summary.error])).toEqual([
      ["20261101T000000Z-F", "edit2"],
      ["20261102T000000Z-F", null],
    ]);
  });
});

describe("what the repository cannot read is not taken for absent", () => {
  test("a manifest object that cannot be read (a flipped byte: REPOSITORY_CORRUPT) fails the listing; a missing one is no backup", async () => {
    const repository = await freshRepository("unreadable");
    expect(await repository.listManifests()).toEqual([]);
    await repository.writeManifest(manifest("20261101T000000Z-F"));
    await repository.writeManifest(manifest("20261102T000000Z-F"));
    expect(await repository.readManifest("20261103T000000Z-F")).toBeNull();
    expect(await repository.listManifestSummaries()).toHaveLength(2);
    const stored = await open(path.join(repository.root, "manifests", "20261102T000000Z-F"), "r+");
    try {
      const byte = Buffer.alloc(1);
      await stored.read(byte, 0, 1, HEADER_SIZE + 10);
      await stored.write(Buffer.from([byte[0]! ^ 0x01]), 0, 1, HEADER_SIZE + 10);
    } finally {
      await stored.close();
    }
    // Taken for absent, the backup would silently leave the listing (the archive's identity, retention, `relevo up`).
    await expect(repository.readManifest("20261102T000000Z-F")).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
    await expect(repository.listManifests()).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
    await expect(repository.listManifestSummaries()).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
  });

  test("a legacy manifest file that cannot be read (here a directory in its place: EISDIR) fails the listing too", async () => {
    const root = path.join(await tempHome("unreadable-legacy"), "repository");
    const repository = new Repository(root, null, { spoolDir: walSpoolDir(path.dirname(root)) });
    await repository.writeManifest(manifest("20261101T000000Z-F"));
    await mkdir(path.join(root, "backups", "20261102T000000Z-F", "manifest.json"), { recursive: true });
    await expect(repository.readManifest("20261102T000000Z-F")).rejects.toMatchObject({ code: "EISDIR" });
    await expect(repository.listManifests()).rejects.toMatchObject({ code: "EISDIR" });
    await expect(repository.listManifestSummaries()).rejects.toMatchObject({ code: "EISDIR" });
    await rm(path.join(root, "backups", "20261102T000000Z-F"), { recursive: true });
    expect((await repository.listManifests()).map((each) => each.id)).toEqual(["20261101T000000Z-F"]);
  });
});
