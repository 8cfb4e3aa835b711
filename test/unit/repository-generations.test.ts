import { expect } from "@jest/globals";
import { mkdir, readFile, readdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import type { RepositorySettings } from "../../src/config/repository-config";
import { ErrorCode } from "../../src/errors";
import { DirectoryStore } from "../../src/repository/directory-store";
import { putObject } from "../../src/repository/object-codec";
import { nextGeneration, parseRepositoryDescriptor, readRepositoryDescriptor } from "../../src/repository/repository-descriptor";
import { REPOSITORY_DESCRIPTOR_KEY, manifestKey } from "../../src/repository/repository-layout";
import { RepositoryKeyring } from "../../src/repository/repository-keyring";
import { RepositoryStore } from "../../src/repository/repository-store";
import { openConfiguredRepository } from "../../src/storage/open-repository";
import { walSpoolDir, type Repository } from "../../src/storage/repository";
import { tempHome } from "../helpers/home";
import { manifest } from "../helpers/manifest-fixture";

const TEST_SCRYPT = { N: 2 ** 12, r: 8, p: 1 };

function settingsOf(root: string, cipherPass = ""): RepositorySettings {
  return { type: "dir", index: 1, path: root, cipherPass, retentionFull: null, retentionDays: null };
}

async function open(root: string, cipherPass = ""): Promise<Repository> {
  return openConfiguredRepository({
    settings: settingsOf(root, cipherPass),
    walOwner: null,
    spoolDir: walSpoolDir(path.dirname(root)),
    create: true,
    scrypt: TEST_SCRYPT,
  });
}

describe("the repository descriptor (pure)", () => {
  test("a descriptor Relevo wrote is read back as it is; the next generation keeps nothing of the previous cluster", () => {
    expect(parseRepositoryDescriptor({ format: 1, generation: 0 }, "r")).toEqual({ format: 1, generation: 0 });
    const second = parseRepositoryDescriptor({ format: 1, generation: 2, systemIdentifier: "7300000000000000001", legacy: false }, "r");
    expect(second).toEqual({ format: 1, generation: 2, systemIdentifier: "7300000000000000001", legacy: false });
    expect(nextGeneration(null)).toEqual({ format: 1, generation: 1 });
    expect(nextGeneration(second)).toEqual({ format: 1, generation: 3 });
  });

  test.each([
    ["not an object", "1"],
    ["another format", { format: 2, generation: 1 }],
    ["no generation", { format: 1 }],
    ["a negative generation", { format: 1, generation: -1 }],
    ["a fractional generation", { format: 1, generation: 1.5 }],
    ["a generation as text", { format: 1, generation: "1" }],
    ["a system identifier that is not one", { format: 1, generation: 1, systemIdentifier: "../x" }],
    ["legacy that is not a flag", { format: 1, generation: 1, legacy: "yes" }],
  ])("%s is REPOSITORY_CORRUPT naming the repository, never generation 0", (_what, value) => {
    expect(() => parseRepositoryDescriptor(value, "/repo")).toThrow(
      expect.objectContaining({ code: ErrorCode.RepositoryCorrupt, message: expect.stringContaining("/repo: repository.json") }),
    );
  });
});

describe("generations in a directory repository", () => {
  test("a new generation writes repository.json, reads and writes only g1/, leaves generation 0 where it was, and a second makes g2/", async () => {
    const root = path.join(await tempHome("generations"), "repository");
    const first = await open(root);
    expect(first.generation).toBe(0);
    await first.writeManifest(manifest("20260101T000000Z-F"));
    // A legacy manifest file and a legacy summary of generation 0: read there, never in a later generation.
    await mkdir(first.backupDir("20250101T000000Z-F"), { recursive: true });
    await writeFile(path.join(first.backupDir("20250101T000000Z-F"), "manifest.json"), JSON.stringify(manifest("20250101T000000Z-F")));
    expect((await first.listManifests()).map((each) => each.id)).toEqual(["20250101T000000Z-F", "20260101T000000Z-F"]);

    // A legacy wal/ (pg_receivewal's directory before the spool) not drained yet: set aside, not carried over.
    await mkdir(first.legacyWal!.path, { mode: 0o700 });
    await first.legacyWal!.create("000000010000000000000001", "");
    const started = await first.startNewGeneration("2026-label");
    expect(started).toEqual({ generation: 1, walSetAside: path.join(root, "superseded", "2026-label", "wal") });
    expect(await readdir(started.walSetAside!)).toEqual(["000000010000000000000001"]);
    expect(await first.legacyWal!.names()).toEqual([]);
    expect(first.generation).toBe(1);
    expect(first.readsLegacy).toBe(false);
    expect(await first.listManifests()).toEqual([]);
    expect(await first.readManifest("20250101T000000Z-F")).toBeNull();
    expect(await first.readManifest("20260101T000000Z-F")).toBeNull();
    expect(() => first.storedPath("20250101T000000Z-F", "data/base/1/1.lz4")).toThrow(
      expect.objectContaining({ code: ErrorCode.RepositoryCorrupt }),
    );
    await first.writeManifest(manifest("20260201T000000Z-F"));
    expect(await first.objects.exists(manifestKey(1, "20260201T000000Z-F"))).toBe(true);
    // Generation 0's objects untouched, and its legacy file too.
    expect(await first.objects.exists(manifestKey(0, "20260101T000000Z-F"))).toBe(true);
    expect(await readdir(first.backupDir("20250101T000000Z-F"))).toEqual(["manifest.json"]);

    // Opened again (another start, the CLI): the descriptor's generation.
    const reopened = await open(root);
    expect(reopened.generation).toBe(1);
    expect((await reopened.listManifests()).map((each) => each.id)).toEqual(["20260201T000000Z-F"]);
    expect(await reopened.startNewGeneration("again")).toEqual({
      generation: 2,
      walSetAside: null,
    });
    expect((await open(root)).generation).toBe(2);
    expect(await readRepositoryDescriptor(reopened.objects)).toEqual({ format: 1, generation: 2 });
    expect(await reopened.listManifests()).toEqual([]);
    await reopened.writeManifest(manifest("20260301T000000Z-F"));
    expect(await reopened.objects.exists(manifestKey(2, "20260301T000000Z-F"))).toBe(true);
    expect((await readdir(root)).sort()).toEqual(["backups", "g1", "g2", "manifests", "repository.json", "superseded"]);
  });

  test("an encrypted repository's descriptor is encrypted, and read under its keys", async () => {
    const root = path.join(await tempHome("generations-encrypted"), "repository");
    const pass = "a pass of some length";
    // The keys made first, by one maker (the service makes them under its Redis lock, which this test has no need of).
    await mkdir(root, { recursive: true, mode: 0o700 });
    await RepositoryKeyring.open(new DirectoryStore(root), {
      cipherPass: pass,
      variable: "RELEVO_REPO1_CIPHER_PASS",
      create: true,
      lock: (work) => work(),
      scrypt: TEST_SCRYPT,
    });
    const repository = await open(root, pass);
    await repository.startNewGeneration("label");
    expect((await open(root, pass)).generation).toBe(1);
    // Read without the keys, its header says encrypted: refused as one, not taken for generation 0.
    await expect(readRepositoryDescriptor(new RepositoryStore(new DirectoryStore(root)))).rejects.toMatchObject({
      code: ErrorCode.RepositoryCorrupt,
    });
  });

  test("an unreadable descriptor refuses the open: plain JSON, not JSON, not a descriptor, cut short", async () => {
    const root = path.join(await tempHome("generations-unreadable"), "repository");
    await open(root);
    const store = new DirectoryStore(root);
    const file = path.join(root, REPOSITORY_DESCRIPTOR_KEY);

    await writeFile(file, JSON.stringify({ format: 1, generation: 1 }));
    await expect(open(root)).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });

    await putObject(store, REPOSITORY_DESCRIPTOR_KEY, Buffer.from("not json"), { encrypted: false });
    await expect(open(root)).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });

    await putObject(store, REPOSITORY_DESCRIPTOR_KEY, Buffer.from(JSON.stringify({ format: 1, generation: "2" })), { encrypted: false });
    await expect(open(root)).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });

    // Cut short (a torn copy): its last chunk is missing.
    await putObject(store, REPOSITORY_DESCRIPTOR_KEY, Buffer.from(JSON.stringify({ format: 1, generation: 1 })), { encrypted: false });
    const whole = await readFile(file);
    await writeFile(file, whole.subarray(0, whole.length - 4));
    await expect(open(root)).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });

    await rm(file);
    expect((await open(root)).generation).toBe(0);
  });
});
