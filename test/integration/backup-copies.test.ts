import { expect } from "@jest/globals";
import { rm } from "node:fs/promises";
import { buffer } from "node:stream/consumers";
import type { BackupManifest } from "../../src/backup/manifest";
import { verifyBackup, type VerifyDeps } from "../../src/backup/verify";
import { createLogger } from "../../src/log";
import type { NodeRef } from "../../src/nodes/node-driver";
import { segmentNumber } from "../../src/postgres/wal-names";
import { contentObjectKey } from "../../src/storage/backup-content";
import type { Repository } from "../../src/storage/repository";
import { graphqlRequest } from "../helpers/graphql-client";
import { startS3Server, type S3TestServer } from "../helpers/s3-server";
import { eventually, useTestCluster, type TestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";

const BUCKET = "relevo-copies";
const silent = createLogger({ level: "silent" });

/**
 * Repository 1: an encrypted directory (the default path), keeping
 * RELEVO_RETENTION_FULL=2 fulls; repository 2: an encrypted bucket of a
 * real S3-protocol server (s3rver on loopback), under another pass,
 * keeping 1. Filled in once the server listens (the cluster's beforeAll
 * reads them after this one's).
 */
function useTwoRepositories(): { env: NodeJS.ProcessEnv; server: () => S3TestServer } {
  const env: NodeJS.ProcessEnv = {};
  let server: S3TestServer | undefined;
  beforeAll(async () => {
    server = await startS3Server({ buckets: [BUCKET] });
    Object.assign(env, {
      RELEVO_REPO1_CIPHER_PASS: "the first repository's pass",
      RELEVO_REPO2_TYPE: "s3",
      RELEVO_REPO2_S3_BUCKET: BUCKET,
      RELEVO_REPO2_S3_ENDPOINT: server.endpoint,
      RELEVO_REPO2_S3_REGION: "us-east-1",
      RELEVO_REPO2_S3_URI_STYLE: "path",
      RELEVO_REPO2_S3_ACCESS_KEY_ID: server.accessKeyId,
      RELEVO_REPO2_S3_SECRET_ACCESS_KEY: server.secretAccessKey,
      RELEVO_REPO2_CIPHER_PASS: "the second repository's own pass",
      RELEVO_REPO2_RETENTION_FULL: "1",
    });
  });
  return {
    env,
    server: () => {
      if (!server) throw new Error("the S3 server did not start");
      return server;
    },
  };
}

/** Statuses of a backup's manifest in each repository, lowest number first ("none" without one). */
async function statuses(cluster: TestCluster, id: string): Promise<string[]> {
  return Promise.all(
    cluster.service.repositories.members.map(async (member) => (await member.repository.readManifest(id))?.status ?? "none"),
  );
}

/** The existing verification (every stored file re-read against the manifest), run against one repository's copy. */
async function verifyIn(repository: Repository, id: string): Promise<void> {
  const verification = await verifyBackup({ repository, logger: silent, parallelism: 2 } as unknown as VerifyDeps, id, {
    restoreTest: false,
  });
  expect(verification).toMatchObject({ contentOk: true, badFiles: [] });
}

describe("backups in two repositories: taken into the first, copied to the second", () => {
  const s3 = useTwoRepositories();
  const cluster = useTestCluster("backup-copies", {}, { env: s3.env });
  afterAll(async () => {
    const server = s3.server();
    await server.stop();
    await rm(server.directory, { recursive: true, force: true });
  });
  const primary = (): NodeRef => cluster.service.nodes[0]!;
  const sql = <T = Record<string, unknown>>(text: string) => sqlOn<T>(primary(), cluster.service.secrets, text);
  const repo = (index: number): Repository => cluster.service.repositories.byIndex(index).repository;
  const backups = {} as Record<"full" | "incr" | "downFull" | "downIncr", BackupManifest>;
  const events = async (kind: string, since: number) =>
    (await cluster.service.events.page({ first: 500 })).events.filter((e) => e.kind === kind && Date.parse(e.occurredAt) >= since);
  /** A backup and what follows it (copies, retention). */
  const take = async (type: "full" | "incremental", repository?: number): Promise<BackupManifest> => {
    const manifest = await (await cluster.service.backups.start(type, { repository })).done;
    expect(manifest).toMatchObject({ type, status: "completed" });
    await cluster.service.backups.waitForIdle();
    return manifest;
  };
  const copiesOf = async (id: string) => {
    const answer = await graphqlRequest<{ backup: { status: string; copies: Array<Record<string, unknown>> } }>(
      cluster.url,
      `query($id: ID!) { backup(id: $id) { status copies { repository status storedBytes error } } }`,
      { token: cluster.token("viewer"), variables: { id } },
    );
    expect(answer.errors).toBeUndefined();
    return answer.data!.backup;
  };

  test("a full and an incremental land completed in both, each copy verifies, and the bucket's objects are under its own keys", async () => {
    const since = Date.now();
    await sql("CREATE TABLE ledger (id serial PRIMARY KEY, body text)");
    await sql("INSERT INTO ledger (body) SELECT md5(g::text) FROM generate_series(1, 20000) g");
    backups.full = await take("full");
    await sql("UPDATE ledger SET body = body || '!' WHERE id <= 2000");
    backups.incr = await take("incremental");
    expect(backups.incr).toMatchObject({ reference: backups.full.id });

    for (const backup of [backups.full, backups.incr]) {
      expect(await statuses(cluster, backup.id)).toEqual(["completed", "completed"]);
      const [first, second] = [(await repo(1).readManifest(backup.id))!, (await repo(2).readManifest(backup.id))!];
      // The same backup (its files, where each is stored, its WAL span), under a data key of each repository's own.
      expect(second).toMatchObject({ id: first.id, startLsn: first.startLsn, stopLsn: first.stopLsn, storedBytes: first.storedBytes });
      expect(second.files).toEqual(first.files);
      expect(second.copyTo).toEqual([2]);
      expect(second.dataKeyId).toMatch(/^[0-9a-f]{32}$/);
      expect(second.dataKeyId).not.toBe(first.dataKeyId);
      expect(await copiesOf(backup.id)).toEqual({
        status: "COMPLETED",
        copies: [
          { repository: 1, status: "COMPLETED", storedBytes: first.storedBytes, error: null },
          { repository: 2, status: "COMPLETED", storedBytes: first.storedBytes, error: null },
        ],
      });
    }
    // The existing verification in each repository: the incremental's reads its whole chain (the full's content too).
    await verifyIn(repo(1), backups.incr.id);
    await verifyIn(repo(2), backups.incr.id);
    expect((await events("backup:copied", since)).map((event) => event.data)).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ id: backups.full.id, repository: 2 }),
        expect.objectContaining({ id: backups.incr.id, repository: 2 }),
      ]),
    );

    // An object of the bucket's copy, raw, in place of the directory's same object: the directory's keys do not open it.
    const stored = backups.full.files.find((entry) => entry.stored && entry.stored.bytes > 0)!.stored!;
    const [key1, key2] = [contentObjectKey(repo(1), backups.full.id, stored.path), contentObjectKey(repo(2), backups.full.id, stored.path)];
    const own = await buffer(await repo(1).objects.store.get(key1));
    const copied = await buffer(await repo(2).objects.store.get(key2));
    expect(copied.equals(own)).toBe(false);
    await repo(1).objects.store.put(key1, copied);
    try {
      await expect(
        repo(1)
          .objects.getStream(key1)
          .then((stream) => buffer(stream)),
      ).rejects.toMatchObject({
        code: expect.stringMatching(/^REPOSITORY_(CORRUPT|ACCESS_DENIED)$/),
      });
    } finally {
      await repo(1).objects.store.put(key1, own);
    }
    // Under its own repository's keys it decodes to the same content as the directory's.
    expect((await buffer(await repo(2).objects.getStream(key2))).equals(await buffer(await repo(1).objects.getStream(key1)))).toBe(true);
  }, 300_000);

  test("a copy whose bucket is down fails with an event, the backup completed all the same; retried after the next backup once it is back", async () => {
    const since = Date.now();
    await s3.server().stop();
    try {
      await sql("INSERT INTO ledger (body) SELECT 'while the bucket is down ' || g FROM generate_series(1, 1000) g");
      backups.downFull = await take("full");
      expect(await repo(1).readManifest(backups.downFull.id)).toMatchObject({ status: "completed", copyTo: [2] });
      const failed = await eventually(async () => (await events("backup:copy-failed", since))[0], { what: "backup:copy-failed" });
      expect(failed).toMatchObject({ severity: "warning", data: { id: backups.downFull.id, repository: 2, reason: expect.any(String) } });
      expect(JSON.stringify(failed)).not.toContain(s3.server().secretAccessKey);
    } finally {
      if (!(await s3.server().running())) await s3.server().start();
    }
    // Nothing of the copy reached the bucket, or a record left copying or failed: not completed there.
    expect((await copiesOf(backups.downFull.id)).copies[1]).toMatchObject({
      repository: 2,
      status: expect.stringMatching(/^(ABSENT|COPYING|FAILED)$/),
    });

    await sql("INSERT INTO ledger (body) SELECT 'after the bucket is back ' || g FROM generate_series(1, 1000) g");
    backups.downIncr = await take("incremental");
    expect(backups.downIncr).toMatchObject({ reference: backups.downFull.id });
    for (const backup of [backups.downFull, backups.downIncr]) expect((await repo(2).readManifest(backup.id))?.status).toBe("completed");
    await verifyIn(repo(2), backups.downIncr.id);
  }, 300_000);

  test("retention per repository: the bucket keeps 1 full with its WAL, the directory 2", async () => {
    // After the last backup's copies: repository 2 keeps the newest full and its incremental; repository 1 both fulls.
    expect(await statuses(cluster, backups.full.id)).toEqual(["completed", "expired"]);
    expect(await statuses(cluster, backups.incr.id)).toEqual(["completed", "expired"]);
    expect(await statuses(cluster, backups.downFull.id)).toEqual(["completed", "completed"]);
    expect(await statuses(cluster, backups.downIncr.id)).toEqual(["completed", "completed"]);
    // The catalog: completed (in repository 1), the copy in 2 absent once expired there.
    expect((await copiesOf(backups.full.id)).copies.map((copy) => copy.status)).toEqual(["COMPLETED", "ABSENT"]);
    // The WAL only the expired backups needed goes from the bucket, not from the directory.
    const oldest = async (repository: Repository) => Math.min(...(await repository.archivedSegmentList()).map((s) => s.segment));
    expect(await oldest(repo(1))).toBeLessThanOrEqual(segmentNumber(backups.full.startLsn));
    expect(await oldest(repo(2))).toBeGreaterThanOrEqual(segmentNumber(backups.downFull.startLsn));
  }, 120_000);

  test("--repo 2 (createBackup's repository) writes to repository 2 alone; an unknown repository is NOT_FOUND", async () => {
    const answer = await graphqlRequest<{ createBackup: { id: string } }>(
      cluster.url,
      `mutation { createBackup(type: FULL, repository: 2) { id } }`,
      { token: cluster.token("operator") },
    );
    expect(answer.errors).toBeUndefined();
    const { id } = answer.data!.createBackup;
    await eventually(async () => ((await repo(2).readManifest(id))?.status === "completed" ? true : undefined), {
      what: "the backup in repository 2",
      timeoutMs: 120_000,
    });
    await cluster.service.backups.waitForIdle();
    expect(await statuses(cluster, id)).toEqual(["none", "completed"]);
    expect((await repo(2).readManifest(id))?.copyTo).toBeUndefined();
    // Listed all the same, from repository 2.
    const listed = await graphqlRequest<{
      backups: { edges: Array<{ node: { id: string; status: string; copies: Array<{ status: string }> } }> };
    }>(cluster.url, `{ backups(first: 50) { edges { node { id status copies { status } } } } }`, { token: cluster.token("viewer") });
    expect(listed.data!.backups.edges.map((edge) => edge.node)).toContainEqual({
      id,
      status: "COMPLETED",
      copies: [{ status: "ABSENT" }, { status: "COMPLETED" }],
    });
    // Repository 2 keeps 1 full: the one taken there now; repository 1's are untouched.
    expect(await statuses(cluster, backups.downFull.id)).toEqual(["completed", "expired"]);

    const refused = await graphqlRequest(cluster.url, `mutation { createBackup(type: FULL, repository: 3) { id } }`, {
      token: cluster.token("operator"),
    });
    expect(refused.errors?.[0]).toMatchObject({ extensions: { code: "NOT_FOUND" }, message: expect.stringContaining("repo1, repo2") });
  }, 180_000);
});
