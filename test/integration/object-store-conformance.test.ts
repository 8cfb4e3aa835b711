import { expect } from "@jest/globals";
import { CreateMultipartUploadCommand, S3Client, UploadPartCommand } from "@aws-sdk/client-s3";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { readdir, writeFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { PassThrough, Readable } from "node:stream";
import { ErrorCode } from "../../src/errors";
import { DirectoryStore } from "../../src/repository/directory-store";
import type { ObjectInfo, ObjectStore } from "../../src/repository/object-store";
import { RepositoryStore } from "../../src/repository/repository-store";
import {
  ARCHIVE_KEY_RECORD,
  assertNotEncrypted,
  KEYRING_COPY_KEY,
  KEYRING_KEY,
  RepositoryKeyring,
  wrappedDataKeyKey,
  type KeysLock,
} from "../../src/repository/repository-keyring";
import { putObject, readObject, UNENCRYPTED } from "../../src/repository/object-codec";
import { S3Store, type S3StoreSettings } from "../../src/repository/s3-store";
import { FileUploadRegistry } from "../../src/repository/upload-registry";
import { thisProcess } from "../../src/storage/file-lock";
import { tempHome } from "../helpers/home";
import { freePort } from "../helpers/ports";
import { createLogger } from "../../src/log";
import { recordRequests, startS3Server, type S3TestServer } from "../helpers/s3-server";

const MiB = 1024 * 1024;
const logger = createLogger({ level: "silent" });
const BUCKET = "relevo-conformance";

/** What a kind of store needs to be made in a test: a fresh store under its own prefix (or directory). */
interface StoreKind {
  readonly name: "directory" | "s3";
  make(label: string): Promise<{ store: ObjectStore; uploads: FileUploadRegistry }>;
}

let s3: S3TestServer;

function s3Settings(label: string, extra: Partial<S3StoreSettings> = {}): S3StoreSettings {
  return {
    bucket: BUCKET,
    endpoint: s3.endpoint,
    region: "us-east-1",
    uriStyle: "path",
    prefix: `${label}/`,
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
    caPem: "",
    requestChecksums: false,
    requestTimeoutMs: 10_000,
    maxAttempts: 3,
    partSizeBytes: 5 * MiB,
    partsInFlight: 2,
    ...extra,
  };
}

const kinds: StoreKind[] = [
  {
    name: "directory",
    make: async (label) => {
      const home = await tempHome(`store-${label}`);
      return { store: new DirectoryStore(path.join(home, "repository")), uploads: new FileUploadRegistry(path.join(home, "uploads.json")) };
    },
  },
  {
    name: "s3",
    make: async (label) => {
      const uploads = new FileUploadRegistry(path.join(await tempHome(`uploads-${label}`), "uploads.json"));
      return { store: await S3Store.open(s3Settings(label), uploads, logger), uploads };
    },
  },
];

/** `size` random bytes as a stream of 64 KiB chunks, and their SHA-256. */
function randomStream(size: number): { stream: Readable; sha256: string } {
  const content = randomBytes(size);
  const chunks: Buffer[] = [];
  for (let offset = 0; offset < size; offset += 65_536) chunks.push(content.subarray(offset, offset + 65_536));
  return { stream: Readable.from(chunks), sha256: createHash("sha256").update(content).digest("hex") };
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** The keys listed under `prefix`, sorted (a store promises no order). */
async function keys(store: ObjectStore, prefix: string): Promise<string[]> {
  const listed: ObjectInfo[] = [];
  for await (const info of store.list(prefix)) listed.push(info);
  return listed.map((info) => info.key).sort();
}

beforeAll(async () => {
  s3 = await startS3Server({ buckets: [BUCKET] });
});

afterAll(async () => {
  await s3?.stop();
});

/**
 * The ObjectStore contract (src/repository/object-store.ts), unchanged for
 * every implementation: a directory, and S3 (a real S3-protocol server,
 * s3rver, on loopback).
 */
describe.each(kinds)("object store conformance: $name", (kind) => {
  let store: ObjectStore;
  let uploads: FileUploadRegistry;
  let label = 0;

  beforeEach(async () => {
    label += 1;
    ({ store, uploads } = await kind.make(`${kind.name}-${label}`));
  });

  afterEach(async () => {
    await store.close();
  });

  test("a put object is read back whole, by head and by byte range; a later put replaces it whole", async () => {
    const content = Buffer.from("0123456789abcdef".repeat(1000));
    const put = await store.put("backups/b1/manifest.json", content);
    expect(put).toMatchObject({ key: "backups/b1/manifest.json", size: content.length });
    expect(Math.abs(put.modifiedAt.getTime() - Date.now())).toBeLessThan(60_000);
    expect(await readAll(await store.get("backups/b1/manifest.json"))).toEqual(content);
    expect(await store.head("backups/b1/manifest.json")).toMatchObject({ key: "backups/b1/manifest.json", size: content.length });
    expect((await readAll(await store.get("backups/b1/manifest.json", { range: { start: 10, end: 20 } }))).toString()).toBe("abcdef0123");
    expect((await readAll(await store.get("backups/b1/manifest.json", { range: { start: 15_990, end: 16_000 } }))).toString()).toBe(
      "6789abcdef",
    );
    await store.put("backups/b1/manifest.json", Buffer.from("short"));
    expect((await readAll(await store.get("backups/b1/manifest.json"))).toString()).toBe("short");
    expect(await store.head("backups/b1/manifest.json")).toMatchObject({ size: 5 });
  });

  test("a stream larger than several parts is stored with its progress reported, and read back byte for byte", async () => {
    const size = 17 * MiB + 12_345;
    const { stream, sha256 } = randomStream(size);
    const progress: number[] = [];
    const put = await store.put("wal/000000010000000000000001", stream, { onProgress: (bytes) => progress.push(bytes) });
    expect(put.size).toBe(size);
    expect(progress.at(-1)).toBe(size);
    expect(progress).toEqual([...progress].sort((a, b) => a - b));
    const read = await readAll(await store.get("wal/000000010000000000000001"));
    expect(createHash("sha256").update(read).digest("hex")).toBe(sha256);
    // A range that spans two parts.
    const across = await readAll(await store.get("wal/000000010000000000000001", { range: { start: 5 * MiB - 10, end: 5 * MiB + 10 } }));
    expect(across).toEqual(read.subarray(5 * MiB - 10, 5 * MiB + 10));
    expect(await uploads.open()).toEqual([]);
  });

  test("a missing object: get is NOT_FOUND, head null; a range outside the object is refused", async () => {
    await expect(store.get("backups/none/manifest.json")).rejects.toMatchObject({ code: ErrorCode.NotFound });
    expect(await store.head("backups/none/manifest.json")).toBeNull();
    await store.put("a/ten", Buffer.from("0123456789"));
    await expect(store.get("a/ten", { range: { start: 5, end: 11 } })).rejects.toMatchObject({ code: ErrorCode.Internal });
    await expect(store.get("a/ten", { range: { start: 10, end: 12 } })).rejects.toMatchObject({ code: ErrorCode.Internal });
  });

  test("list by prefix: every object below it, nothing else", async () => {
    for (const key of ["backups/10/m", "backups/1/m", "backups/1/data/x", "backups/2/m", "backups-old/m", "wal/a", "backupsX"]) {
      await store.put(key, Buffer.from(key));
    }
    expect(await keys(store, "backups/")).toEqual(["backups/1/data/x", "backups/1/m", "backups/10/m", "backups/2/m"]);
    expect(await keys(store, "backups/1")).toEqual(["backups/1/data/x", "backups/1/m", "backups/10/m"]);
    expect(await keys(store, "backups/1/")).toEqual(["backups/1/data/x", "backups/1/m"]);
    expect(await keys(store, "backups")).toEqual([
      "backups-old/m",
      "backups/1/data/x",
      "backups/1/m",
      "backups/10/m",
      "backups/2/m",
      "backupsX",
    ]);
    expect(await keys(store, "nothing/")).toEqual([]);
    expect((await keys(store, "")).length).toBe(7);
  });

  test("delete removes the objects named; one already absent is no error", async () => {
    await store.put("wal/a", Buffer.from("a"));
    await store.put("wal/b", Buffer.from("b"));
    await store.delete(["wal/a", "wal/missing"]);
    expect(await keys(store, "wal/")).toEqual(["wal/b"]);
  });

  test("a put whose stream fails, or that is aborted, leaves nothing under the key and no open upload", async () => {
    const failing = new Readable({ read() {} });
    failing.push(randomBytes(6 * MiB));
    setTimeout(() => failing.destroy(new Error("the source broke")), 200);
    await expect(store.put("wal/broken", failing)).rejects.toThrow();
    expect(await store.head("wal/broken")).toBeNull();

    const controller = new AbortController();
    const endless = new Readable({
      read() {
        this.push(randomBytes(MiB));
      },
    });
    setTimeout(() => controller.abort(), 300);
    await expect(store.put("wal/aborted", endless, { signal: controller.signal })).rejects.toThrow();
    expect(await store.head("wal/aborted")).toBeNull();

    // Aborted before the put began (a pusher's stop while its pass takes the next file): refused, and the body, which
    // nobody reads and nothing listens to, is not destroyed with an error no one handles (that crashed the process).
    const stopped = new AbortController();
    stopped.abort(new Error("the pusher stopped"));
    const unread = new PassThrough();
    unread.end(randomBytes(1024));
    await expect(store.put("wal/late", unread, { signal: stopped.signal })).rejects.toThrow("the pusher stopped");
    await new Promise((resolve) => setImmediate(resolve));
    expect(unread.errored).toBeNull();
    expect(await store.head("wal/late")).toBeNull();
    expect(await keys(store, "wal/")).toEqual([]);
    expect(await uploads.open()).toEqual([]);
  });

  test("an object's etag is the same from put, head and list, and changes when other content of its size replaces it", async () => {
    const first = await store.put("manifests/m", Buffer.from("0123456789"));
    expect(first.etag).not.toBe("");
    expect((await store.head("manifests/m"))?.etag).toBe(first.etag);
    const listed: ObjectInfo[] = [];
    for await (const info of store.list("manifests/")) listed.push(info);
    expect(listed.map((info) => info.etag)).toEqual([first.etag]);
    // Same size, same second: only the etag tells the versions apart (what a cache of parsed manifests keys on).
    const second = await store.put("manifests/m", Buffer.from("9876543210"));
    expect(second.size).toBe(first.size);
    expect(second.etag).not.toBe(first.etag);
    expect((await store.head("manifests/m"))?.etag).toBe(second.etag);
  });

  test("keys that are not keys are refused before any I/O", async () => {
    for (const key of ["", "../x", "a/../b", ".hidden", "a//b", "/abs", "a/", "a/.tmp", "a b", "a\nb"]) {
      await expect(store.put(key, Buffer.from("x"))).rejects.toMatchObject({ code: ErrorCode.Internal });
      await expect(store.get(key)).rejects.toMatchObject({ code: ErrorCode.Internal });
    }
  });
});

/** scrypt made cheap for tests that open keyrings many times; the production cost is used once below. */
const TEST_SCRYPT = { N: 2 ** 12, r: 8, p: 1 };
const PASS = "correct horse battery staple";
const VARIABLE = "RELEVO_REPO1_CIPHER_PASS";
/**
 * One process makes the keys in each test here, so there is nothing for the
 * lock to exclude; two makers at once take the real one (Redis), in
 * repository-locks.test.ts.
 */
const soleMaker: KeysLock = (work) => work();

/** An encrypted repository's keys (repository-keyring.ts) on each kind of store. */
describe.each(kinds)("encrypted repository keys: $name", (kind) => {
  let store: ObjectStore;
  let label = 0;
  const open = (options: Partial<Parameters<typeof RepositoryKeyring.open>[1]> = {}): Promise<RepositoryKeyring> =>
    RepositoryKeyring.open(store, { cipherPass: PASS, variable: VARIABLE, create: true, lock: soleMaker, scrypt: TEST_SCRYPT, ...options });

  beforeEach(async () => {
    label += 1;
    ({ store } = await kind.make(`${kind.name}-keys-${label}`));
  });

  afterEach(async () => {
    await store.close();
  });

  test("a new keyring encrypts under a data key that another opening with the pass reads; the pass is stored nowhere", async () => {
    const made = await RepositoryKeyring.open(store, { cipherPass: PASS, variable: VARIABLE, create: true, lock: soleMaker });
    const dataKey = await made.newDataKey();
    await new RepositoryStore(store, made.policy).writeJson("manifests/m1", { secret: "table contents" }, { dataKey });

    const reopened = await RepositoryKeyring.open(store, { cipherPass: PASS, variable: VARIABLE, create: false });
    expect(await new RepositoryStore(store, reopened.policy).readJson("manifests/m1")).toEqual({ secret: "table contents" });
    // Stored: the keyring and its copy (at the production scrypt cost), the archive's record and wrapped key, the
    // backup's wrapped key, the object; no plaintext, no pass.
    const archiveId = (await made.archiveKey()).id.toString("hex");
    expect(await keys(store, "")).toEqual(
      [
        "keys/archive",
        `keys/data/${archiveId}`,
        `keys/data/${dataKey.id.toString("hex")}`,
        "keys/keyring",
        "keys/keyring.copy",
        "manifests/m1",
      ].sort(),
    );
    for (const key of await keys(store, "")) {
      const stored = await readAll(await store.get(key));
      expect(stored.includes(Buffer.from(PASS))).toBe(false);
      expect(stored.includes(Buffer.from("table contents"))).toBe(false);
      expect(stored.includes(dataKey.key)).toBe(false);
    }
    expect(JSON.parse((await readObject(store, KEYRING_KEY, UNENCRYPTED)).toString())).toMatchObject({
      scrypt: { N: 2 ** 17, r: 8, p: 1 },
    });
    // An unencrypted reader is refused by the repository's rule, whatever it is told: the object is not checksummed only.
    await expect(new RepositoryStore(store).readJson("manifests/m1")).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
    await expect(assertNotEncrypted(store, VARIABLE)).rejects.toMatchObject({
      code: ErrorCode.RepositoryAccessDenied,
      details: { env: VARIABLE },
    });
  });

  test("a wrong pass is REPOSITORY_ACCESS_DENIED naming the repository and its variable", async () => {
    await open();
    const wrong = open({ cipherPass: "not the right pass at all", create: false });
    await expect(wrong).rejects.toMatchObject({
      code: ErrorCode.RepositoryAccessDenied,
      details: { repository: store.location, env: VARIABLE },
    });
    await expect(wrong).rejects.toThrow(/RELEVO_REPO1_CIPHER_PASS does not open/);
  });

  test("a pass for a repository with unencrypted content, or no keyring to read, is refused; nothing is written", async () => {
    await expect(open({ create: false })).rejects.toMatchObject({ code: ErrorCode.PreconditionFailed });
    await expect(open({ create: false })).rejects.toThrow(/is empty: no service has started on it yet/);
    await new RepositoryStore(store).writeJson("manifests/m1", { plain: true });
    await expect(open()).rejects.toMatchObject({ code: ErrorCode.PreconditionFailed, details: { env: VARIABLE } });
    // A reader (a restore, a check) is told the same, never to start a service that would refuse it.
    for (const create of [true, false]) {
      const refused = await open({ create }).catch((error: Error) => error);
      expect((refused as Error).message).toMatch(/not encrypted \(unset RELEVO_REPO1_CIPHER_PASS/);
      expect((refused as Error).message).not.toMatch(/no service has started/);
    }
    expect(await keys(store, "")).toEqual(["manifests/m1"]);
    await expect(assertNotEncrypted(store, VARIABLE)).resolves.toBeUndefined();
  });

  test("the archive's data key is made with the keyring, sealed in its record; a record naming another key is REPOSITORY_CORRUPT", async () => {
    const made = await open();
    const archive = await made.archiveKey();
    const reopened = await open({ create: false });
    expect((await reopened.archiveKey()).id.equals(archive.id)).toBe(true);
    // The record names the key sealed under the repository key: it never holds the key, nor shows its id.
    const record = await readObject(store, ARCHIVE_KEY_RECORD, UNENCRYPTED);
    expect(Object.keys(JSON.parse(record.toString()) as object)).toEqual(["format", "sealed"]);
    expect(record.includes(archive.key)).toBe(false);
    expect(record.includes(Buffer.from(archive.id.toString("hex")))).toBe(false);
    // Pointed at a backup's key by someone without the pass (a record as the previous format wrote it, or the sealed
    // record of another repository): refused, never taken for the archive's writes, never made again over.
    const backupKey = await made.newDataKey();
    for (const planted of [
      { format: 1, id: backupKey.id.toString("hex") },
      { format: 1, sealed: randomBytes(44).toString("base64") },
      "{",
    ]) {
      await putObject(store, ARCHIVE_KEY_RECORD, Buffer.from(typeof planted === "string" ? planted : JSON.stringify(planted)), {
        encrypted: false,
      });
      await expect((await open({ create: false })).archiveKey()).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
      await expect(open()).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
    }
    await putObject(store, ARCHIVE_KEY_RECORD, record, { encrypted: false });
    expect((await (await open()).archiveKey()).id.equals(archive.id)).toBe(true);
  });

  test("the keyring's copy stands in for a lost or damaged keyring; with both gone the repository is encrypted and its keyring lost", async () => {
    const made = await open();
    const dataKey = await made.newDataKey();
    await new RepositoryStore(store, made.policy).writeJson("manifests/m1", { n: 1 }, { dataKey });
    const keyring = await readObject(store, KEYRING_KEY, UNENCRYPTED);
    await store.put(KEYRING_KEY, Buffer.from("damaged"));
    expect(await new RepositoryStore(store, (await open({ create: false })).policy).readJson("manifests/m1")).toEqual({ n: 1 });
    await store.delete([KEYRING_KEY]);
    expect(await new RepositoryStore(store, (await open({ create: false })).policy).readJson("manifests/m1")).toEqual({ n: 1 });
    await store.delete([KEYRING_COPY_KEY]);
    // Keys without a keyring: lost, said so, never opened plain nor given a new keyring (which would open none of them).
    for (const create of [true, false]) {
      const lost = open({ create });
      await expect(lost).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt, details: { repository: store.location } });
      await expect(lost).rejects.toThrow(/keyring is lost .*put back a copy of keys\/keyring/);
    }
    // Without a pass: refused as encrypted, whichever key remains.
    await expect(assertNotEncrypted(store, VARIABLE)).rejects.toMatchObject({ code: ErrorCode.RepositoryAccessDenied });
    await store.delete([ARCHIVE_KEY_RECORD]);
    await expect(assertNotEncrypted(store, VARIABLE)).rejects.toMatchObject({ code: ErrorCode.RepositoryAccessDenied });
    expect(await keys(store, "keys/")).not.toContain(KEYRING_KEY);
    await putObject(store, KEYRING_KEY, keyring, { encrypted: false });
    expect(await new RepositoryStore(store, (await open({ create: false })).policy).readJson("manifests/m1")).toEqual({ n: 1 });
  });

  test("a keyring made again under the opened one stops new data keys; a missing or swapped wrapped key is REPOSITORY_CORRUPT", async () => {
    const keyring = await open();
    await keyring.archiveKey();
    const dataKey = await keyring.newDataKey();
    await new RepositoryStore(store, keyring.policy).writeJson("manifests/m1", { n: 1 }, { dataKey });
    const other = await keyring.newDataKey();
    await new RepositoryStore(store, keyring.policy).writeJson("manifests/m2", { n: 2 }, { dataKey: other });

    // A reader that never saw the keys: the wrapped key is read from the store. Swapped for another id's, it does not open.
    const reader = async (): Promise<RepositoryStore> => new RepositoryStore(store, (await open({ create: false })).policy);
    const wrapped = await readAll(await store.get(wrappedDataKeyKey(other.id)));
    await store.put(wrappedDataKeyKey(dataKey.id), wrapped);
    await expect((await reader()).readJson("manifests/m1")).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
    await store.delete([wrappedDataKeyKey(dataKey.id)]);
    await expect((await reader()).readJson("manifests/m1")).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
    expect(await (await reader()).readJson("manifests/m2")).toEqual({ n: 2 });

    // The keyring replaced under an open one (another salt: made anew elsewhere, or put back by hand): no new key under
    // the old repository key, which no later reader could open.
    const stored = JSON.parse((await readObject(store, KEYRING_KEY, UNENCRYPTED)).toString()) as { salt: string };
    const replaced = { ...stored, salt: randomBytes(16).toString("base64") };
    await putObject(store, KEYRING_KEY, Buffer.from(JSON.stringify(replaced)), { encrypted: false });
    await expect(keyring.newDataKey()).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
    // Nor for the archive's writes, though its key was handed out before.
    await expect(keyring.archiveKey()).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
  });

  test("a planted keyring asking scrypt for more than Relevo allows is refused before any work", async () => {
    // Each asks more than 256 MiB (128·N·r), more time (p), or what scrypt cannot do (N not a power of two).
    for (const scrypt of [
      { N: 2 ** 30, r: 8, p: 1 },
      { N: 2 ** 20, r: 32, p: 1 },
      { N: 2 ** 18, r: 16, p: 1 },
      { N: 2 ** 17, r: 8, p: 16 },
      { N: 3000, r: 8, p: 1 },
    ]) {
      const planted = { format: 1, scrypt, salt: "AAAA", check: "AAAA" };
      await putObject(store, KEYRING_KEY, Buffer.from(JSON.stringify(planted)), { encrypted: false });
      await expect(open({ create: false })).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
    }
  });
});

describe("S3 store: what only object storage can do wrong", () => {
  test("wrong credentials and a missing bucket are REPOSITORY_ACCESS_DENIED; a store that does not answer, REPOSITORY_UNAVAILABLE", async () => {
    const uploads = new FileUploadRegistry(path.join(await tempHome("s3-faults"), "uploads.json"));
    // An access key the server does not know (s3rver checks the key's id, not the signature's secret).
    await expect(S3Store.open(s3Settings("faults", { accessKeyId: "NOT-OURS" }), uploads, logger)).rejects.toMatchObject({
      code: ErrorCode.RepositoryAccessDenied,
      message: expect.stringContaining("check the access key") as unknown,
    });
    // Found at open (a HEAD of an object cannot tell a missing bucket from a missing object).
    await expect(S3Store.open(s3Settings("faults", { bucket: "no-such-bucket" }), uploads, logger)).rejects.toMatchObject({
      code: ErrorCode.RepositoryAccessDenied,
      message: expect.stringContaining("the bucket no-such-bucket does not exist") as unknown,
    });
    await expect(
      S3Store.open(
        s3Settings("faults", { endpoint: `http://127.0.0.1:${await freePort()}`, maxAttempts: 2, requestTimeoutMs: 2000 }),
        uploads,
        logger,
      ),
    ).rejects.toMatchObject({ code: ErrorCode.RepositoryUnavailable });
    // A store that accepts connections and never answers: every request ends within its inactivity bound (and retries).
    const silent = net.createServer(() => undefined);
    silent.listen(0, "127.0.0.1");
    await once(silent, "listening");
    const sockets = new Set<net.Socket>();
    silent.on("connection", (socket) => sockets.add(socket));
    try {
      const endpoint = `http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
      const started = Date.now();
      await expect(
        S3Store.open(s3Settings("faults", { endpoint, maxAttempts: 2, requestTimeoutMs: 1000 }), uploads, logger),
      ).rejects.toMatchObject({
        code: ErrorCode.RepositoryUnavailable,
      });
      expect(Date.now() - started).toBeLessThan(15_000);
    } finally {
      for (const socket of sockets) socket.destroy();
      silent.close();
    }
  });

  test("through RepositoryStore, an absent document is null but a store that does not answer is REPOSITORY_UNAVAILABLE, never null", async () => {
    const uploads = new FileUploadRegistry(path.join(await tempHome("s3-facade"), "uploads.json"));
    const store = await S3Store.open(s3Settings("facade", { maxAttempts: 2, requestTimeoutMs: 2000 }), uploads, logger);
    const repository = new RepositoryStore(store);
    await repository.writeJson("manifests/20261207T093000Z-F", { id: "20261207T093000Z-F" });
    expect(await repository.readJson("manifests/20261207T093000Z-F")).toEqual({ id: "20261207T093000Z-F" });
    expect(await repository.readJson("manifests/20261207T093100Z-F")).toBeNull();
    await s3.stop();
    try {
      // Taken for absent, an archive's identity or a repository's backups would vanish while the store is down.
      await expect(repository.readJson("manifests/20261207T093000Z-F")).rejects.toMatchObject({ code: ErrorCode.RepositoryUnavailable });
      await expect(repository.list("manifests/")).rejects.toMatchObject({ code: ErrorCode.RepositoryUnavailable });
    } finally {
      await s3.start();
      await store.close();
    }
  });

  test("two prefixes in one bucket are two repositories: neither lists the other's objects", async () => {
    const uploads = new FileUploadRegistry(path.join(await tempHome("s3-prefixes"), "uploads.json"));
    const first = await S3Store.open(s3Settings("cluster-a"), uploads, logger);
    const second = await S3Store.open(s3Settings("cluster-ab"), uploads, logger);
    await first.put("wal/x", Buffer.from("a"));
    await second.put("wal/x", Buffer.from("b"));
    expect(await keys(first, "")).toEqual(["wal/x"]);
    expect((await readAll(await second.get("wal/x"))).toString()).toBe("b");
    await Promise.all([first.close(), second.close()]);
  });

  test("a multipart upload a crash abandoned is aborted when the store is opened again; one a live process runs is left alone", async () => {
    const home = await tempHome("s3-abandoned");
    const uploads = new FileUploadRegistry(path.join(home, "uploads.json"));
    // The crashed process: a real one, gone now (its pid names no process).
    const crashed = spawn(process.execPath, ["-e", ""]);
    await once(crashed, "exit");
    const gone = { ...(await thisProcess()), pid: crashed.pid!, processStart: "" };
    // Another process's upload in progress (the service, while an operator's `relevo repo check` opens the store).
    const running = {
      uploadId: "upload-of-a-live-process",
      bucketKey: "abandoned/wal/other",
      begunAt: new Date().toISOString(),
      owner: await thisProcess(),
    };
    await uploads.begun(running);
    // The crashed process: it began an upload (recorded, as S3Store records one) and sent a part, then died.
    const raw = new S3Client({
      endpoint: s3.endpoint,
      region: "us-east-1",
      forcePathStyle: true,
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    });
    const begun = await raw.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: "abandoned/wal/partial" }));
    await uploads.begun({ uploadId: begun.UploadId!, bucketKey: "abandoned/wal/partial", begunAt: new Date().toISOString(), owner: gone });
    await raw.send(
      new UploadPartCommand({
        Bucket: BUCKET,
        Key: "abandoned/wal/partial",
        UploadId: begun.UploadId!,
        PartNumber: 1,
        Body: randomBytes(1024),
      }),
    );
    raw.destroy();
    // Opened again, through a proxy that shows what was asked: the abort of that upload, by its id. (s3rver answers an
    // abort 405, as a server that cannot abort: the record is dropped all the same, with a warning, not retried for ever.)
    const recorder = await recordRequests(s3);
    try {
      const store = await S3Store.open({ ...s3Settings("abandoned"), endpoint: recorder.endpoint }, uploads, logger);
      const abort = new RegExp(`^DELETE /${BUCKET}/abandoned/wal/partial\\?uploadId=${begun.UploadId!}(&|$)`);
      expect(recorder.requests.filter((request) => abort.test(request))).toHaveLength(1);
      expect(recorder.requests.filter((request) => request.includes("upload-of-a-live-process"))).toEqual([]);
      expect(await uploads.open()).toEqual([running]);
      expect(await store.head("wal/partial")).toBeNull();
      await store.close();
    } finally {
      await recorder.close();
    }
  });

  test("an upload this process runs is recorded before its first part, and forgotten once complete", async () => {
    const registryFile = path.join(await tempHome("s3-recorded"), "uploads.json");
    const uploads = new FileUploadRegistry(registryFile);
    // What the record held when the store's first part reached the server (read as the request passes the proxy).
    let atFirstPart: unknown = "no part seen";
    const recorder = await recordRequests(s3, {
      onRequest: (request) => {
        if (atFirstPart === "no part seen" && /^PUT .*[?&]partNumber=1(&|$)/.test(request)) {
          atFirstPart = JSON.parse(readFileSync(registryFile, "utf8")) as unknown;
        }
      },
    });
    try {
      const store = await S3Store.open({ ...s3Settings("recorded"), endpoint: recorder.endpoint }, uploads, logger);
      const { stream } = randomStream(11 * MiB);
      await store.put("wal/big", stream);
      expect(atFirstPart).toEqual([expect.objectContaining({ bucketKey: "recorded/wal/big" })]);
      expect(await uploads.open()).toEqual([]);
      await store.close();
    } finally {
      await recorder.close();
    }
  });
});

describe("directory store: what only a file system can leave behind", () => {
  test("a temporary file a crash left beside an object is never listed nor read as one", async () => {
    const home = await tempHome("dir-temp");
    const store = new DirectoryStore(path.join(home, "repository"));
    await store.put("wal/a", Buffer.from("a"));
    await writeFile(path.join(home, "repository", "wal", "b.relevo-tmp-999999-0123456789ab"), "torn");
    expect(await keys(store, "wal/")).toEqual(["wal/a"]);
    expect((await readdir(path.join(home, "repository", "wal"))).sort()).toEqual(["a", "b.relevo-tmp-999999-0123456789ab"]);
  });
});
