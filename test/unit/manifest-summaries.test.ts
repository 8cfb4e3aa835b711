import { expect } from "@jest/globals";
import { mkdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import type { BackupManifest } from "../../src/backup/manifest";
import { Repository } from "../../src/storage/repository";
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

describe("the repository's listing for the API (listManifestSummaries)", () => {
  test("a manifest is parsed once per version of its file: unchanged ones come back as they were, changed and new ones are read", async () => {
    const repository = new Repository(path.join(await tempHome("summaries"), "repository"), null);
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

    // Rewritten in place (not by writeManifest), removed, or no longer readable: each is seen on the next listing.
    await writeFile(
      path.join(repository.backupDir("20261101T000000Z-F"), "manifest.json"),
      JSON.stringify(manifest("20261101T000000Z-F", { error: "edited" })),
    );
    await rm(repository.backupDir("20261103T000000Z-F"), { recursive: true });
    await writeFile(path.join(repository.backupDir("20261102T000000Z-F"), "manifest.json"), "{ damaged");
    const third = await repository.listManifestSummaries();
    expect(third.map((summary) => [summary.id, summary.error])).toEqual([["20261101T000000Z-F", "edited"]]);
  });
});

describe("what the repository cannot read is not taken for absent", () => {
  test("a manifest that cannot be read (here a directory in its place: EISDIR) fails the listing; a missing one is no backup", async () => {
    const root = path.join(await tempHome("unreadable"), "repository");
    const repository = new Repository(root, null);
    expect(await repository.listManifests()).toEqual([]);
    await repository.writeManifest(manifest("20261101T000000Z-F"));
    expect(await repository.readManifest("20261102T000000Z-F")).toBeNull();
    await mkdir(path.join(root, "backups", "20261102T000000Z-F", "manifest.json"), { recursive: true });
    // Taken for absent, the backup would silently leave the listing (the archive's identity, retention, `relevo up`).
    await expect(repository.readManifest("20261102T000000Z-F")).rejects.toMatchObject({ code: "EISDIR" });
    await expect(repository.listManifests()).rejects.toMatchObject({ code: "EISDIR" });
    await expect(repository.listManifestSummaries()).rejects.toMatchObject({ code: "EISDIR" });
  });
});
