import { expect } from "@jest/globals";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { access } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { BackupLocks, type HeldBackupLocks, type LockHolder } from "../../src/storage/backup-locks";
import { restoreCommand } from "../../src/cli/backup-commands";
import { withClusterRedis } from "../../src/cli/cluster-redis";
import type { Secrets } from "../../src/secrets/secrets-store";
import { connect } from "node:net";
import { loadConfig } from "../../src/config/config";
import { createLogger } from "../../src/log";
import { projectRoot } from "../../src/util/project-root";
import { tempHome } from "../helpers/home";
import { eventually } from "../helpers/service";
import { freePort } from "../helpers/ports";
import { ReplayPauseMarkers } from "../../src/cluster/replay-pause-markers";
import { redisKeys, type RedisKeys } from "../../src/redis/keys";
import { createRedisClient, type RedisEndpoint } from "../../src/redis/redis-client";
import { ensureRedisServer, type RedisServerHandle } from "../../src/redis/redis-server";
import type Redis from "ioredis";
import { Repository, walSpoolDir } from "../../src/storage/repository";
import { verifyBackup, type VerifyDeps } from "../../src/backup/verify";
import type { BackupManifest } from "../../src/backup/manifest";
import { newManifest } from "../../src/backup/backup-start";
import { BackupService, type BackupServiceDeps } from "../../src/backup/backup-service";
import { RepositorySet } from "../../src/storage/repository-set";
import type { RepositorySettings } from "../../src/config/repository-config";
import { testRedisTls } from "../helpers/tls";
import { setTimeout as delay } from "node:timers/promises";
import { Readable } from "node:stream";
import { DirectoryStore } from "../../src/repository/directory-store";
import type { ObjectStore, PutOptions } from "../../src/repository/object-store";
import { RepositoryStore } from "../../src/repository/repository-store";
import { KEYRING_KEY, RepositoryKeyring } from "../../src/repository/repository-keyring";
import { openConfiguredRepository, repositoryKeysLock } from "../../src/storage/open-repository";
import { failBackup } from "../../src/backup/backup-complete";
import { fixedTrust } from "../../src/postgres/connection";
import { BackupSession } from "../../src/backup/backup-session";
import { BackupContentWriter } from "../../src/storage/backup-content";
import { manifest as manifestFixture } from "../helpers/manifest-fixture";
import { ErrorCode } from "../../src/errors";
import { backupContentPrefix } from "../../src/repository/repository-layout";
import { readFile, writeFile } from "node:fs/promises";

const ID = "20261125T224500Z-F";
const silent = createLogger({ level: "silent" });

/**
 * The repository's backup locks live in Redis (S3 has no lock): one real
 * Redis server (Relevo's own, TLS and all) for this file, each test under a
 * key prefix of its own.
 */
let server: RedisServerHandle;
let endpoint: RedisEndpoint;
let redis: Redis;
let prefixes = 0;

beforeAll(async () => {
  const tls = await testRedisTls();
  endpoint = { host: "127.0.0.1", port: await freePort(), password: "locks-test-password-0123", tls: tls.client };
  server = await ensureRedisServer({
    home: await tempHome("locks-redis"),
    host: endpoint.host,
    port: endpoint.port,
    password: endpoint.password,
    bin: "redis-server",
    startTimeoutMs: 30000,
    logger: silent,
    tls,
  });
  redis = createRedisClient(endpoint, { name: "locks" });
  await eventually(async () => ((await redis.ping().catch(() => null)) === "PONG" ? true : undefined));
});

afterAll(async () => {
  redis.disconnect();
  await server.stop();
});

function freshKeys(): RedisKeys {
  prefixes += 1;
  return redisKeys(`locks-${process.pid}-${prefixes}`);
}

/** This process's locks under `keys`, with a time to live of `ttlMs`. */
function locksOn(keys: RedisKeys, ttlMs = 10_000, logger = silent): BackupLocks {
  return new BackupLocks(redis, keys, { ttlMs, logger });
}

/**
 * Another process holding a backup's lock, as the CLI's `relevo restore` or a
 * second service instance does: the built modules (dist/, as bin/relevo runs
 * them) reach the same Redis, take the lock, say so, and hold it (renewing
 * it) until killed.
 */
async function holderProcess(keys: RedisKeys, ttlMs: number): Promise<ChildProcess> {
  const module = (name: string): string => JSON.stringify(path.join(projectRoot(), "dist/src", name));
  const plainEndpoint = { ...endpoint, tls: { ca: endpoint.tls!.ca, cert: endpoint.tls!.cert, key: endpoint.tls!.key } };
  const script =
    `const { BackupLocks } = require(${module("storage/backup-locks.js")});` +
    `const { createRedisClient } = require(${module("redis/redis-client.js")});` +
    `const { redisKeys } = require(${module("redis/keys.js")});` +
    `const { createLogger } = require(${module("log.js")});` +
    `const redis = createRedisClient(JSON.parse(process.env.LOCKS_TEST_REDIS), { name: "holder", queueWhileOffline: true });` +
    `new BackupLocks(redis, redisKeys(${JSON.stringify(keys.prefix.slice("relevo:".length))}), { ttlMs: ${ttlMs}, logger: createLogger({ level: "silent" }) })` +
    `.acquire([${JSON.stringify(ID)}], { purpose: "verification", waitMs: 0 })` +
    `.then(() => console.log("held"), (error) => { console.log(error.message); process.exit(1); });`;
  const child = spawn(process.execPath, ["-e", script], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, LOCKS_TEST_REDIS: JSON.stringify(plainEndpoint) },
  });
  const [line] = (await once(createInterface({ input: child.stdout }), "line")) as [string];
  expect(line).toBe("held");
  return child;
}

describe("backup locks in Redis: across processes, never left held by a crash", () => {
  test("held by another process: the next holder waits, naming it, for as long as it lives; killed (SIGKILL), the lock is free once its time to live runs out", async () => {
    const keys = freshKeys();
    const ttlMs = 2000;
    const child = await holderProcess(keys, ttlMs);
    const locks = locksOn(keys, ttlMs);
    const waitedFor: LockHolder[] = [];
    let held: HeldBackupLocks | null = null;
    const acquiring = locks.acquire([ID], {
      purpose: "expiry",
      waitMs: 60_000,
      pollMs: 50,
      onWait: (_id, holder) => waitedFor.push(holder),
    });
    void acquiring.then((locked) => (held = locked));
    try {
      await eventually(() => (waitedFor.length > 0 ? true : undefined), { timeoutMs: 10000 });
      expect(waitedFor).toEqual([expect.objectContaining({ pid: child.pid, host: os.hostname(), purpose: "verification" })]);
      // Alive, the holder renews its lock: well past one time to live, it is still its.
      await new Promise((resolve) => setTimeout(resolve, 2 * ttlMs));
      expect(held).toBeNull();
      expect(await locks.holder(ID)).toMatchObject({ pid: child.pid });
      child.kill("SIGKILL");
      await once(child, "exit");
      const killedAt = Date.now();
      const taken = await acquiring;
      // Freed by its time to live (its last renewal at most a third of it before the kill), not by anything else.
      const freedAfter = Date.now() - killedAt;
      expect(freedAfter).toBeGreaterThanOrEqual(ttlMs / 2);
      expect(freedAfter).toBeLessThan(ttlMs + 2000);
      expect(await locks.holder(ID)).toMatchObject({ pid: process.pid, purpose: "expiry" });
      await taken.release();
      expect(await locks.holder(ID)).toBeNull();
      expect(await redis.exists(keys.backupLock(ID))).toBe(0);
    } finally {
      child.kill("SIGKILL");
    }
  });

  test("in one process, two holders of one backup take turns; locks on several backups are taken in one order", async () => {
    const locks = locksOn(freshKeys());
    const other = "20261126T000000Z-D";
    const first = await locks.acquire([other, ID], { purpose: "restore", waitMs: 0 });
    expect(first.ids).toEqual([ID, other]);
    let second: HeldBackupLocks | null = null;
    const acquiring = locks.acquire([ID], { purpose: "verification", waitMs: 20_000, pollMs: 20 }).then((locked) => (second = locked));
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(second).toBeNull();
    expect(await locks.holder(ID)).toMatchObject({ purpose: "restore" });
    await first.release();
    await acquiring;
    expect(await locks.holder(ID)).toMatchObject({ purpose: "verification" });
    expect(await locks.holder(other)).toBeNull();
    await second!.release();
  });
});

describe("backup locks in Redis: bounded waits, what a refusal says, renewals and releases", () => {
  test("tried once (waitMs 0), a held lock is LOCK_HELD at once, naming its holder in the message and the details (never its token)", async () => {
    const keys = freshKeys();
    const locks = locksOn(keys);
    const held = await locks.acquire([ID], { purpose: "restore into copy1", waitMs: 0 });
    const waitedFor: LockHolder[] = [];
    const started = Date.now();
    const refusal = await locks.acquire([ID], { purpose: "expiry", waitMs: 0, onWait: (_id, holder) => waitedFor.push(holder) }).then(
      () => null,
      (error: unknown) => error,
    );
    expect(Date.now() - started).toBeLessThan(1000);
    expect(waitedFor).toEqual([]);
    expect(refusal).toMatchObject({
      code: "LOCK_HELD",
      message: expect.stringContaining(
        `expiry: backup ${ID}'s lock is held by pid ${process.pid} on ${os.hostname()}, restore into copy1, since `,
      ),
      details: {
        backupId: ID,
        lockKey: keys.backupLock(ID),
        holder: { host: os.hostname(), pid: process.pid, purpose: "restore into copy1", since: expect.any(String) },
      },
    });
    expect((refusal as { details: { holder: object } }).details.holder).not.toHaveProperty("token");
    await held.release();
  });

  test("a wait is bounded: LOCK_HELD once waitMs has passed, the holder announced once", async () => {
    const locks = locksOn(freshKeys());
    const held = await locks.acquire([ID], { purpose: "verification", waitMs: 0 });
    const waitedFor: LockHolder[] = [];
    const started = Date.now();
    await expect(
      locks.acquire([ID], { purpose: "restore", waitMs: 800, pollMs: 20, onWait: (_id, holder) => waitedFor.push(holder) }),
    ).rejects.toMatchObject({ code: "LOCK_HELD", message: expect.stringContaining("(waited 1 s)") });
    expect(Date.now() - started).toBeGreaterThanOrEqual(800);
    expect(waitedFor).toEqual([expect.objectContaining({ purpose: "verification", pid: process.pid })]);
    await held.release();
  });

  test("a holder keeps its lock for as long as it holds it, many times to live; the key is gone once released", async () => {
    const keys = freshKeys();
    const ttlMs = 300;
    const locks = locksOn(keys, ttlMs);
    const held = await locks.acquire([ID], { purpose: "restore", waitMs: 0 });
    await new Promise((resolve) => setTimeout(resolve, 5 * ttlMs));
    await expect(locksOn(keys, ttlMs).acquire([ID], { purpose: "expiry", waitMs: 0 })).rejects.toMatchObject({ code: "LOCK_HELD" });
    expect(await redis.pttl(keys.backupLock(ID))).toBeGreaterThan(0);
    await held.release();
    expect(await redis.exists(keys.backupLock(ID))).toBe(0);
  });

  test("a holder whose lock lapsed (Redis lost it) says so, never takes it back, and its release leaves the next holder's lock alone", async () => {
    const keys = freshKeys();
    const ttlMs = 300;
    const logged: string[] = [];
    const logger = createLogger({ level: "info", destination: { write: (line: string) => void logged.push(line) } });
    const first = await locksOn(keys, ttlMs, logger).acquire([ID], { purpose: "restore", waitMs: 0 });
    await redis.del(keys.backupLock(ID)); // as a Redis restarted without its data would
    const second = await locksOn(keys, ttlMs).acquire([ID], { purpose: "verification", waitMs: 0 });
    await eventually(() => (logged.some((line) => line.includes(`backup ${ID}'s lock lapsed while held`)) ? true : undefined), {
      timeoutMs: 5000,
    });
    // Its holder is told: the work under it (a restore, a verification) stops on this signal.
    expect(first.lost.aborted).toBe(true);
    expect(first.lost.reason).toMatchObject({ code: "LOCK_LOST", details: { backupId: ID, lockKey: keys.backupLock(ID) } });
    expect(second.lost.aborted).toBe(false);
    await first.release();
    expect(await locksOn(keys).holder(ID)).toMatchObject({ purpose: "verification" });
    await new Promise((resolve) => setTimeout(resolve, 2 * ttlMs));
    expect(await locksOn(keys).holder(ID)).toMatchObject({ purpose: "verification" });
    await second.release();
    expect(await locksOn(keys).holder(ID)).toBeNull();
  });

  test("Redis unreachable: taking a lock is SERVICE_UNAVAILABLE (retry later), never a bare connection error", async () => {
    const nowhere = createRedisClient(
      { host: "127.0.0.1", port: await freePort(), password: "unused", external: true },
      { name: "nowhere" },
    );
    try {
      await expect(
        new BackupLocks(nowhere, freshKeys(), { ttlMs: 1000, logger: silent }).acquire([ID], { purpose: "restore", waitMs: 0 }),
      ).rejects.toMatchObject({ code: "SERVICE_UNAVAILABLE", message: expect.stringContaining(`backup ${ID}'s lock`) });
    } finally {
      nowhere.disconnect();
    }
  });

  test("a repository opened without its locks refuses to lock (a defect), rather than run unlocked", async () => {
    const home = await tempHome("locks-none");
    const repository = new Repository(path.join(home, "repository"), null, { spoolDir: walSpoolDir(home) });
    await expect(repository.lockBackups([ID], { purpose: "restore", waitMs: 0 })).rejects.toMatchObject({ code: "INTERNAL" });
  });
});

/** A view of `store` whose keyring writes land `delayMs` late: a second first start whose scrypt and write ran slow. */
function lateKeyringWrites(store: ObjectStore, delayMs: number): ObjectStore {
  return new Proxy(store, {
    get(target, name) {
      if (name === "put") {
        return async (key: string, body: Readable | Buffer, options?: PutOptions) => {
          if (key.startsWith(KEYRING_KEY)) await delay(delayMs);
          return target.put(key, body, options);
        };
      }
      const value = Reflect.get(target, name, target) as unknown;
      return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

describe("an encrypted repository's keys, made under the lock in Redis", () => {
  const PASS = "two first starts share one pass";
  const keysOpening = (store: ObjectStore, keys: RedisKeys) =>
    RepositoryKeyring.open(store, {
      cipherPass: PASS,
      variable: "RELEVO_REPO1_CIPHER_PASS",
      create: true,
      lock: repositoryKeysLock(locksOn(keys)),
      scrypt: { N: 2 ** 12, r: 8, p: 1 },
    });

  test("two first starts at once, one writing late: one keyring and one archive key, which both use and a later start reads", async () => {
    const dir = await tempHome("keys-race");
    const keys = freshKeys();
    const store = new DirectoryStore(dir);
    // The late one's keyring write lands long after the other has made its archive key (what the lock prevents).
    const [early, late] = await Promise.all([keysOpening(store, keys), keysOpening(lateKeyringWrites(store, 400), keys)]);
    const [earlyArchive, lateArchive] = [await early.archiveKey(), await late.archiveKey()];
    expect(lateArchive.id.equals(earlyArchive.id)).toBe(true);
    const segment = "archive/0000000100000000/000000010000000000000001";
    await new RepositoryStore(store, early.policy).writeJson(segment, { wal: 1 }, { dataKey: earlyArchive });
    const backupKey = await late.newDataKey();
    await new RepositoryStore(store, late.policy).writeJson("manifests/m1", { backup: 1 }, { dataKey: backupKey });
    // A restart: what either wrote reads back; the lock is not left held.
    const restarted = await keysOpening(store, keys);
    expect(await new RepositoryStore(store, restarted.policy).readJson(segment)).toEqual({ wal: 1 });
    expect(await new RepositoryStore(store, restarted.policy).readJson("manifests/m1")).toEqual({ backup: 1 });
    expect(await redis.keys(`${keys.backupLock("*")}`)).toEqual([]);
  });

  test("a backup that fails before it has its data key (the source unreachable) is still recorded as failed, under the archive's key", async () => {
    const dir = await tempHome("keys-failed-backup");
    const repository = await openEncrypted(dir, PASS);
    const source = { name: "gone", host: "127.0.0.1", port: await freePort() };
    const session = new BackupSession({
      source,
      superuser: { user: "postgres", password: "unused", database: "postgres", trustedCa: fixedTrust("") },
    });
    // What takeBackup meets first: nothing listens on the source's port.
    const error = await session.connect().then(
      () => null,
      (failure: Error) => failure,
    );
    expect(error).not.toBeNull();
    const manifest = newManifest({ clusterName: "keys", type: "full", source, compression: "none", startedAt: new Date() });
    expect(manifest.dataKeyId).toBeUndefined();
    const thrown = await failBackup({ repository, session, manifest, error, logger: silent });
    expect(thrown).toMatchObject({ code: "COMMAND_FAILED", details: { backupId: manifest.id } });
    const recorded = await repository.readManifest(manifest.id);
    expect(recorded).toMatchObject({ id: manifest.id, status: "failed", error: error!.message });
    // Under the archive's key, the only data key the repository holds: none was made for a record without content.
    expect(recorded?.dataKeyId).toBeUndefined();
    expect(await keysUnder(dir, "keys/data/")).toHaveLength(1);
  });

  test("a removed backup's data key goes after its content: at expiry, after an interrupted expiry, for a failed backup", async () => {
    const dir = await tempHome("keys-removed");
    const repository = await openEncrypted(dir, PASS);
    const archiveKeyOnly = await keysUnder(dir, "keys/data/");
    expect(archiveKeyOnly).toHaveLength(1);
    /** A completed full backup of day `day` with a data key of its own and one content object under it. */
    const stored = async (day: number): Promise<BackupManifest> => {
      const id = `202611${String(day).padStart(2, "0")}T000000Z-F`;
      const at = (minute: number): string => `2026-11-${String(day).padStart(2, "0")}T00:0${minute}:00.000Z`;
      const backup = await repository.withNewDataKey(manifestFixture(id, { startedAt: at(0), stoppedAt: at(1), finishedAt: at(2) }));
      const writer = new BackupContentWriter(repository, backup);
      await writer.put(writer.nextDataPath(), Readable.from([Buffer.from(`content of ${id}`)]));
      await repository.writeManifest(backup);
      return backup;
    };
    const keyOf = (backup: BackupManifest): string => `keys/data/${backup.dataKeyId!}`;
    const [first, second, third, failing] = [await stored(1), await stored(2), await stored(3), await stored(4)];
    const firstAsCompleted = await readFile(path.join(dir, "manifests", first.id));
    // An expiry of `first` interrupted after its record (as an earlier version wrote it, under the backup's own key).
    await repository.objects.writeJson(
      `manifests/${first.id}`,
      { ...first, status: "expired" },
      { dataKey: await repository.dataKeyOf(first) },
    );

    const deps = {
      repositories: new RepositorySet([{ index: 1, settings: { index: 1 } as RepositorySettings, repository }]),
      repository,
      logger: silent,
      events: { emit: () => Promise.resolve() },
      retention: () => ({ keepFull: 2, keepDays: null }),
    } as unknown as BackupServiceDeps;
    // Keeps the two newest fulls of four (the failing one among them, until it fails): the second expires now.
    expect(await new BackupService(deps).expire()).toMatchObject({ expired: [second.id] });
    for (const gone of [first, second]) {
      expect(await repository.readManifest(gone.id)).toMatchObject({ status: "expired" });
      expect((await repository.readManifest(gone.id))?.dataKeyId).toBeUndefined();
      expect(await keysUnder(dir, backupContentPrefix(0, gone.id))).toEqual([]);
      expect(await keysUnder(dir, keyOf(gone))).toEqual([]);
    }
    expect(await keysUnder(dir, keyOf(third))).toEqual([keyOf(third)]);
    expect(await keysUnder(dir, backupContentPrefix(0, third.id))).toHaveLength(1);

    // A backup failing with content written: its content, then its key, go; its record stays readable.
    const source = { name: "gone", host: "127.0.0.1", port: await freePort() };
    const session = new BackupSession({
      source,
      superuser: { user: "postgres", password: "unused", database: "postgres", trustedCa: fixedTrust("") },
    });
    await failBackup({ repository, session, manifest: failing, error: new Error("the source went away"), logger: silent });
    expect(await repository.readManifest(failing.id)).toMatchObject({ status: "failed", error: "the source went away" });
    expect((await repository.readManifest(failing.id))?.dataKeyId).toBeUndefined();
    expect(await keysUnder(dir, backupContentPrefix(0, failing.id))).toEqual([]);
    expect(await keysUnder(dir, keyOf(failing))).toEqual([]);
    expect((await keysUnder(dir, "keys/data/")).sort()).toEqual([...archiveKeyOnly, keyOf(third)].sort());

    // Its completed manifest put back (validly encrypted, Relevo's own bytes): its key is gone, so it is refused.
    await writeFile(path.join(dir, "manifests", first.id), firstAsCompleted);
    await expect(repository.readManifest(first.id)).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
  });
});

/** An encrypted directory repository at `dir`, opened as the service opens it (its keys made now). */
function openEncrypted(dir: string, cipherPass: string): Promise<Repository> {
  return openConfiguredRepository({
    settings: { type: "dir", index: 1, path: dir, cipherPass, retentionFull: null, retentionDays: null },
    walOwner: null,
    spoolDir: walSpoolDir(dir),
    locks: locksOn(freshKeys()),
    create: true,
    scrypt: { N: 2 ** 12, r: 8, p: 1 },
  });
}

/** The keys of objects under `prefix` in the directory repository `dir`. */
async function keysUnder(dir: string, prefix: string): Promise<string[]> {
  const found: string[] = [];
  for await (const info of new DirectoryStore(dir).list(prefix)) found.push(info.key);
  return found;
}

describe("the cluster's Redis for relevo restore (withClusterRedis): started for the while, never stopped under another client", () => {
  /** Whether anything accepts connections on the port. */
  const listening = (port: number): Promise<boolean> =>
    new Promise((resolve) => {
      const socket = connect({ host: "127.0.0.1", port }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });

  test("Relevo's own Redis, not running: started for the command and stopped after it, unless another client uses it by then", async () => {
    const port = await freePort();
    const config = loadConfig({ RELEVO_HOME: await tempHome("cli-redis"), RELEVO_REDIS_PORT: String(port) });
    const secrets = { redisPassword: "cli-redis-test-password-0123" } as Secrets;
    expect(await withClusterRedis(config, secrets, silent, (client) => client.ping())).toBe("PONG");
    expect(await listening(port)).toBe(false);

    // A `relevo up` started meanwhile adopts the command's Redis: it must outlive the command.
    let adopter: Redis | null = null;
    await withClusterRedis(config, secrets, silent, async (client) => {
      adopter = client.duplicate();
      await adopter.ping();
    });
    try {
      expect(await adopter!.ping()).toBe("PONG");
    } finally {
      // Not awaited: the server exits without answering, and this client would send it again to a server gone.
      void adopter!.call("SHUTDOWN").catch(() => undefined);
      await eventually(async () => ((await listening(port)) ? undefined : true), { timeoutMs: 10000 });
      adopter!.disconnect();
    }
  });
});

describe("a restore's claim of its target (a lock file on the host, not the repository's lock)", () => {
  test("relevo restore --to a directory another restore has claimed is TARGET_NOT_EMPTY, nothing read or written", async () => {
    const home = await tempHome("locks-restore-claim");
    const directory = path.join(home, "copy");
    const module = path.join(projectRoot(), "dist/src/storage/file-lock.js");
    const script =
      `require(${JSON.stringify(module)}).acquireFileLock(${JSON.stringify(`${directory}.restore.lock`)}, { purpose: "restore", waitMs: 0 })` +
      `.then(() => { console.log("held"); setInterval(() => {}, 1000); });`;
    const child = spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "inherit"] });
    try {
      const [line] = (await once(createInterface({ input: child.stdout }), "line")) as [string];
      expect(line).toBe("held");
      const config = loadConfig({ RELEVO_HOME: home });
      await expect(
        restoreCommand(config, { to: directory, port: 1 }, createLogger({ level: "silent" }), { out: () => undefined, terminal: false }),
      ).rejects.toMatchObject({
        code: "TARGET_NOT_EMPTY",
        message: expect.stringContaining(`${directory}/data) is being made by another process, pid ${child.pid}`),
      });
      await expect(access(directory)).rejects.toMatchObject({ code: "ENOENT" });
    } finally {
      child.kill("SIGKILL");
    }
  });
});

describe("a replica's replay pause marker: one capture at a time, cleared by its owner only", () => {
  const keys = redisKeys("markers");
  let markers: ReplayPauseMarkers;
  beforeAll(() => {
    markers = new ReplayPauseMarkers(redis, keys);
  });

  test("a second capture on the replica waits for the first's release; a capture whose mark expired never clears the next one's", async () => {
    const first = await markers.hold("node2", { ttlMs: 10_000, waitMs: 0 });
    let second: string | null = null;
    const holding = markers.hold("node2", { ttlMs: 300, waitMs: 10_000, pollMs: 20 }).then((token) => (second = token));
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(second).toBeNull();
    await markers.release("node2", first);
    await holding;
    expect(await redis.get(keys.replayPauseMarker("node2"))).toBe(second);
    // The second's mark expires (its service died); a third capture marks; the second's late release leaves it.
    await eventually(async () => ((await markers.held("node2")) ? undefined : true), { timeoutMs: 5000 });
    const third = await markers.hold("node2", { ttlMs: 10_000, waitMs: 0 });
    await markers.release("node2", second!);
    expect(await redis.get(keys.replayPauseMarker("node2"))).toBe(third);
    await expect(markers.hold("node2", { ttlMs: 10_000, waitMs: 0 })).rejects.toMatchObject({ code: "LOCK_HELD" });
    await markers.release("node2", third);
    expect(await markers.held("node2")).toBe(false);
  });
});

describe("expiry and the service's stop against a verification under way", () => {
  /** A completed backup's manifest (no files: only its chain is checked). */
  const manifest = (type: "full" | "differential", startedAt: string, reference: string | null): BackupManifest => ({
    ...newManifest({
      clusterName: "c",
      type,
      source: { name: "node1", host: "127.0.0.1", port: 1 },
      compression: "gzip",
      startedAt: new Date(startedAt),
    }),
    status: "completed",
    reference,
  });

  test("a verification that waited for the full's lock while expiry let the full go is refused, and writes no failed verification", async () => {
    const home = await tempHome("locks-expiry-race");
    const repository = new Repository(path.join(home, "repository"), null, { spoolDir: walSpoolDir(home), locks: locksOn(freshKeys()) });
    await repository.ensure();
    const full = manifest("full", "2026-11-01T00:00:00Z", null);
    const differential = manifest("differential", "2026-11-02T00:00:00Z", full.id);
    await repository.writeManifest(full);
    await repository.writeManifest(differential);
    // Expiry holds the full: the verification of its differential waits for that lock.
    const expiry = await repository.lockBackups([full.id], { purpose: "expiry", waitMs: 0 });
    // Only the content check runs (no restore test): it needs the repository, nothing of a cluster.
    const logged: string[] = [];
    const logger = createLogger({ level: "info", destination: { write: (line: string) => void logged.push(line) } });
    const deps = { repository, logger, parallelism: 1 } as unknown as VerifyDeps;
    const verifying = verifyBackup(deps, differential.id, { restoreTest: false });
    const outcome = verifying.then(
      () => null,
      (error: unknown) => error,
    );
    await eventually(() =>
      logged.some((line) => line.includes(`waits for another holder of backup ${full.id}'s lock`)) ? true : undefined,
    );
    await repository.writeManifest({ ...full, status: "expired" });
    await expiry.release();
    expect(await outcome).toMatchObject({ code: "PRECONDITION_FAILED", message: expect.stringContaining(`${full.id}, which is expired`) });
    expect((await repository.readManifest(differential.id))?.verification).toBeUndefined();
    expect(await repository.locks!.holder(differential.id)).toBeNull();
  });

  test("the service's stop (waitForIdle) waits for a verification under way, so its scratch node is removed before the service goes", async () => {
    const home = await tempHome("locks-idle");
    const repository = new Repository(path.join(home, "repository"), null, { spoolDir: walSpoolDir(home), locks: locksOn(freshKeys()) });
    await repository.ensure();
    const full = manifest("full", "2026-11-01T00:00:00Z", null);
    await repository.writeManifest(full);
    const logger = createLogger({ level: "silent" });
    // Events are not under test here: a sink.
    const repositories = new RepositorySet([{ index: 1, settings: { index: 1 } as RepositorySettings, repository }]);
    const deps = {
      repositories,
      repository,
      logger,
      parallelism: 1,
      events: { emit: () => Promise.resolve() },
    } as unknown as BackupServiceDeps;
    const service = new BackupService(deps);
    // Another holder of the backup's lock keeps the verification under way until it lets go.
    const other = await repository.lockBackups([full.id], { purpose: "restore", waitMs: 0 });
    const verifying = service.verify(full.id, { restoreTest: false });
    let idle = false;
    const stopping = service.waitForIdle().then(() => (idle = true));
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(idle).toBe(false);
    await other.release();
    await stopping;
    // Idle only once the verification was done: its result is written.
    expect((await repository.readManifest(full.id))?.verification).toMatchObject({ contentOk: true });
    await verifying;
  });
});
