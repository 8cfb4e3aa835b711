import { expect } from "@jest/globals";
import { mkdir, readFile, readdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import type { RepositorySettings } from "../../src/config/repository-config";
import { ErrorCode } from "../../src/errors";
import { DirectoryStore } from "../../src/repository/directory-store";
import { UNENCRYPTED, putObject, readObject } from "../../src/repository/object-codec";
import {
  assertDescriptorOfCluster,
  identityRecording,
  nextGeneration,
  parseRepositoryDescriptor,
  readRepositoryDescriptor,
} from "../../src/repository/repository-descriptor";
import { identityFile, recordIdentity } from "../../src/cluster/cluster-identity";
import { REPOSITORY_DESCRIPTOR_KEY, legacyWalSummaryKey, manifestKey } from "../../src/repository/repository-layout";
import { KEYRING_COPY_KEY, KEYRING_KEY, RepositoryKeyring } from "../../src/repository/repository-keyring";
import type { RelevoConfig } from "../../src/config/config";
import { createLogger } from "../../src/log";
import { walSummarizerFor } from "../../src/wal/wal-summary";
import { RepositoryStore } from "../../src/repository/repository-store";
import { openConfiguredRepository } from "../../src/storage/open-repository";
import { walSpoolDir, type Repository } from "../../src/storage/repository";
import { tempHome } from "../helpers/home";
import { manifest } from "../helpers/manifest-fixture";

const TEST_SCRYPT = { N: 2 ** 12, r: 8, p: 1 };

function settingsOf(root: string, cipherPass = ""): RepositorySettings {
  return { type: "dir", index: 1, path: root, cipherPass, retentionFull: null, retentionDays: null };
}

/** The repository at `root` opened as the service opens it, for the data home `root`'s parent. */
async function open(root: string, cipherPass = ""): Promise<Repository> {
  return openConfiguredRepository({
    settings: settingsOf(root, cipherPass),
    walOwner: null,
    spoolDir: walSpoolDir(path.dirname(root)),
    home: path.dirname(root),
    create: true,
    scrypt: TEST_SCRYPT,
  });
}

/** Its keys made first, by one maker (the service makes them under its Redis lock, which these tests have no need of). */
async function makeKeys(root: string, pass: string): Promise<void> {
  await mkdir(root, { recursive: true, mode: 0o700 });
  await RepositoryKeyring.open(new DirectoryStore(root), {
    cipherPass: pass,
    variable: "RELEVO_REPO1_CIPHER_PASS",
    create: true,
    lock: (work) => work(),
    scrypt: TEST_SCRYPT,
  });
}

const CLUSTER_A = "7300000000000000001";
const CLUSTER_B = "7300000000000000002";

describe("the repository descriptor (pure)", () => {
  test("a descriptor Relevo wrote is read back as it is; the next generation keeps nothing of the previous cluster", () => {
    expect(parseRepositoryDescriptor({ format: 1, generation: 0 }, "r")).toEqual({ format: 1, generation: 0 });
    const second = parseRepositoryDescriptor({ format: 1, generation: 2, systemIdentifier: CLUSTER_A }, "r");
    expect(second).toEqual({ format: 1, generation: 2, systemIdentifier: CLUSTER_A });
    // A field Relevo does not read is dropped (`legacy` was documented once, never written).
    expect(parseRepositoryDescriptor({ format: 1, generation: 0, legacy: true }, "r")).toEqual({ format: 1, generation: 0 });
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
  ])("%s is REPOSITORY_CORRUPT naming the repository, never generation 0", (_what, value) => {
    expect(() => parseRepositoryDescriptor(value, "/repo")).toThrow(
      expect.objectContaining({ code: ErrorCode.RepositoryCorrupt, message: expect.stringContaining("/repo: repository.json") }),
    );
  });
});

describe("the cluster a descriptor names (pure)", () => {
  test("the primary's identifier is written once into the generation opened, never over another cluster's", () => {
    const options = { generation: 1, systemIdentifier: CLUSTER_A };
    expect(identityRecording({ format: 1, generation: 1 }, options)).toEqual({
      phase: "write",
      descriptor: { format: 1, generation: 1, systemIdentifier: CLUSTER_A },
    });
    // No descriptor is generation 0's: one is written for it.
    expect(identityRecording(null, { ...options, generation: 0 })).toEqual({
      phase: "write",
      descriptor: { format: 1, generation: 0, systemIdentifier: CLUSTER_A },
    });
    expect(identityRecording({ format: 1, generation: 1, systemIdentifier: CLUSTER_A }, options)).toEqual({ phase: "recorded" });
    expect(identityRecording({ format: 1, generation: 1, systemIdentifier: CLUSTER_B }, options)).toMatchObject({ phase: "conflict" });
    // Another start-over since this process opened the repository: not its generation to name.
    expect(identityRecording({ format: 1, generation: 2 }, options)).toMatchObject({ phase: "conflict" });
  });

  test("a descriptor of another cluster than the home's is REPOSITORY_CLUSTER_MISMATCH; an unknown side passes", () => {
    const home = { systemIdentifier: CLUSTER_B, file: "/home/cluster-identity.json" };
    expect(() => assertDescriptorOfCluster({ format: 1, generation: 0, systemIdentifier: CLUSTER_A }, home, "/repo")).toThrow(
      expect.objectContaining({
        code: ErrorCode.RepositoryClusterMismatch,
        message: expect.stringContaining(
          `/repo: repository.json (generation 0) belongs to the cluster with system identifier ${CLUSTER_A}`,
        ),
      }),
    );
    expect(() => assertDescriptorOfCluster({ format: 1, generation: 3, systemIdentifier: CLUSTER_B }, home, "/repo")).not.toThrow();
    expect(() => assertDescriptorOfCluster({ format: 1, generation: 3 }, home, "/repo")).not.toThrow();
    expect(() => assertDescriptorOfCluster(null, home, "/repo")).not.toThrow();
    expect(() => assertDescriptorOfCluster({ format: 1, generation: 0, systemIdentifier: CLUSTER_A }, null, "/repo")).not.toThrow();
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
    await makeKeys(root, pass);
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

  test("a deleted descriptor is REPOSITORY_CORRUPT while a later generation's objects remain, never generation 0", async () => {
    const root = path.join(await tempHome("generations-deleted"), "repository");
    const repository = await open(root);
    await repository.writeManifest(manifest("20260101T000000Z-F"));
    await repository.startNewGeneration("label");
    await repository.writeManifest(manifest("20260201T000000Z-F"));
    await rm(path.join(root, REPOSITORY_DESCRIPTOR_KEY));
    await expect(open(root)).rejects.toMatchObject({
      code: ErrorCode.RepositoryCorrupt,
      message: expect.stringContaining("repository.json is missing but the repository holds generation 1 (g1/)"),
    });
  });

  test("repository.json records the cluster, encrypted; an open from a home of another cluster, or an older descriptor put back, is refused", async () => {
    const root = path.join(await tempHome("generations-identity"), "repository");
    const home = path.dirname(root);
    const pass = "a pass of some length";
    await makeKeys(root, pass);
    const first = await open(root, pass);
    await recordIdentity(home, "main", CLUSTER_A);
    // Generation 0 had no descriptor: one is written for it, naming the cluster, once.
    expect(await first.recordSystemIdentifier(CLUSTER_A)).toMatchObject({ phase: "write" });
    expect(await first.recordSystemIdentifier(CLUSTER_A)).toEqual({ phase: "recorded" });
    expect(await readRepositoryDescriptor(first.objects)).toEqual({ format: 1, generation: 0, systemIdentifier: CLUSTER_A });
    await expect(readRepositoryDescriptor(new RepositoryStore(new DirectoryStore(root)))).rejects.toMatchObject({
      code: ErrorCode.RepositoryCorrupt,
    });
    expect((await open(root, pass)).generation).toBe(0);
    const generation0 = await readFile(path.join(root, REPOSITORY_DESCRIPTOR_KEY));

    // The same repository opened from a home of another cluster: refused, naming both.
    await recordIdentity(home, "main", CLUSTER_B);
    await expect(open(root, pass)).rejects.toMatchObject({
      code: ErrorCode.RepositoryClusterMismatch,
      message: expect.stringContaining(`this data home's cluster is ${CLUSTER_B} (${identityFile(home)})`),
    });

    // Started over (generation 1 names no cluster until its primary is known), then its cluster B recorded.
    await recordIdentity(home, "main", CLUSTER_A);
    await first.startNewGeneration("label");
    await recordIdentity(home, "main", CLUSTER_B);
    expect((await open(root, pass)).generation).toBe(1);
    expect(await first.recordSystemIdentifier(CLUSTER_B)).toMatchObject({ phase: "write" });
    expect((await open(root, pass)).generation).toBe(1);
    // Generation 0's descriptor put back (validly encrypted, Relevo's own): it names cluster A, and the home knows B.
    await writeFile(path.join(root, REPOSITORY_DESCRIPTOR_KEY), generation0);
    await expect(open(root, pass)).rejects.toMatchObject({ code: ErrorCode.RepositoryClusterMismatch });
  });

  test("the identifier is not written over a generation holding another cluster's backups", async () => {
    const root = path.join(await tempHome("generations-foreign"), "repository");
    const repository = await open(root);
    // The fixture's completed backup is system identifier 1's.
    await repository.writeManifest(manifest("20260101T000000Z-F"));
    expect(await repository.recordSystemIdentifier(CLUSTER_A)).toMatchObject({
      phase: "conflict",
      reason: expect.stringContaining("system identifier 1's backup 20260101T000000Z-F"),
    });
    expect(await readRepositoryDescriptor(repository.objects)).toBeNull();
    expect(await repository.recordSystemIdentifier("1")).toMatchObject({ phase: "write" });
  });
});

describe("an encrypted repository's keyring and an earlier layout's files", () => {
  const SEGMENT = "000000010000000000000003";

  /** Plants what a directory repository held before objects: a legacy manifest file and a plain JSON summary. */
  async function plantLegacyFiles(repository: Repository, id: string): Promise<void> {
    await mkdir(repository.backupDir(id), { recursive: true });
    await writeFile(path.join(repository.backupDir(id), "manifest.json"), JSON.stringify(manifest(id)));
    await mkdir(repository.walSummaryDir, { recursive: true });
    const summary = { segment: SEGMENT, lastTransactionEndAt: "2030-01-01T00:00:00.000Z", relations: [] };
    await writeFile(path.join(repository.root, legacyWalSummaryKey(0, SEGMENT)), JSON.stringify(summary));
  }

  /** The repository's summaries as the service reads them (walSummarizerFor: readLegacy from the repository). */
  function summarizerOf(repository: Repository) {
    const config = { home: path.dirname(repository.root), pgBinDir: "/nonexistent", walSummaryIntervalMs: 60_000 } as RelevoConfig;
    return walSummarizerFor(repository, config, createLogger({ level: "silent" }));
  }

  test("a legacy manifest.json and a plain wal-summary/<segment>.json planted in an encrypted repository are not read", async () => {
    const id = "20250101T000000Z-F";
    // The control: in an unencrypted generation 0 both are read (an earlier Relevo's files).
    const plain = await open(path.join(await tempHome("legacy-plain"), "repository"));
    await plantLegacyFiles(plain, id);
    expect((await plain.listManifests()).map((each) => each.id)).toEqual([id]);
    expect(await summarizerOf(plain).read(SEGMENT)).toMatchObject({ lastTransactionEndAt: "2030-01-01T00:00:00.000Z" });

    const root = path.join(await tempHome("legacy-encrypted"), "repository");
    const pass = "a pass of some length";
    await makeKeys(root, pass);
    const encrypted = await open(root, pass);
    await plantLegacyFiles(encrypted, id);
    expect(await encrypted.listManifests()).toEqual([]);
    expect(await encrypted.listManifestSummaries()).toEqual([]);
    expect(await encrypted.readManifest(id)).toBeNull();
    expect(await summarizerOf(encrypted).read(SEGMENT)).toBeNull();
  });

  test("a lost or damaged keys/keyring.copy (or keys/keyring) is made again at the next start, from the one the pass opens", async () => {
    const root = path.join(await tempHome("keyring-copy"), "repository");
    const pass = "a pass of some length";
    await makeKeys(root, pass);
    // What each holds (the stored form's checksum binds the object's key: the two files differ, their keyring does not).
    const keyringAt = (key: string): Promise<Buffer> => readObject(new DirectoryStore(root), key, UNENCRYPTED);
    const original = await keyringAt(KEYRING_KEY);
    expect(await keyringAt(KEYRING_COPY_KEY)).toEqual(original);

    await rm(path.join(root, KEYRING_COPY_KEY));
    await open(root, pass);
    expect(await keyringAt(KEYRING_COPY_KEY)).toEqual(original);

    // Damaged (one byte flipped): taken for lost, and written again.
    const file = path.join(root, KEYRING_COPY_KEY);
    const damaged = await readFile(file);
    damaged[damaged.length - 1]! ^= 0xff;
    await writeFile(file, damaged);
    await open(root, pass);
    expect(await keyringAt(KEYRING_COPY_KEY)).toEqual(original);

    // The first one lost: opened from the copy, and made again from it.
    await rm(path.join(root, KEYRING_KEY));
    await open(root, pass);
    expect(await keyringAt(KEYRING_KEY)).toEqual(original);

    // A reader (a restore, a check) never writes: the copy stays lost until the service starts.
    await rm(path.join(root, KEYRING_COPY_KEY));
    await openConfiguredRepository({
      settings: settingsOf(root, pass),
      walOwner: null,
      spoolDir: walSpoolDir(path.dirname(root)),
      create: false,
      scrypt: TEST_SCRYPT,
    });
    await expect(readFile(path.join(root, KEYRING_COPY_KEY))).rejects.toMatchObject({ code: "ENOENT" });
  });
});
