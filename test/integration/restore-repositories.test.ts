import { expect } from "@jest/globals";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { buffer } from "node:stream/consumers";
import type { BackupManifest } from "../../src/backup/manifest";
import type { NodeRef } from "../../src/nodes/node-driver";
import { segmentName, segmentNumber } from "../../src/postgres/wal-names";
import type { ObjectStore } from "../../src/repository/object-store";
import { archiveKey, backupContentPrefix } from "../../src/repository/repository-layout";
import { backupHelpers } from "../helpers/backups";
import { graphqlRequest } from "../helpers/graphql-client";
import { freePort } from "../helpers/ports";
import { stopAfterCluster, useS3Repository } from "../helpers/s3-server";
import { useTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";

const BUCKET = "relevo-restore-fallback";

/**
 * Repository 2 a directory beside repository 1's bucket (useS3Repository):
 * its variables added to `env` once made (hooks run in declaration order,
 * so before the cluster's start reads them), removed after the cluster.
 */
function useDirectoryRepository2(env: NodeJS.ProcessEnv): { removeAfterCluster: () => void } {
  let directory: string | undefined;
  beforeAll(async () => {
    directory = await mkdtemp(path.join(tmpdir(), "relevo-repo2-"));
    Object.assign(env, { RELEVO_REPO2_TYPE: "dir", RELEVO_REPO2_PATH: path.join(directory, "repository") });
  });
  return {
    removeAfterCluster: () => {
      afterAll(async () => {
        if (directory) await rm(directory, { recursive: true, force: true });
      });
    },
  };
}

async function keysUnder(store: ObjectStore, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const info of store.list(prefix)) keys.push(info.key);
  return keys.sort();
}

describe("a restore over two repositories (S3 and a directory)", () => {
  // Repository 1 in a bucket of a real S3-protocol server (s3rver on loopback), repository 2 a directory; both unencrypted.
  const s3 = useS3Repository({ bucket: BUCKET, prefix: "cluster/" });
  const repository2 = useDirectoryRepository2(s3.env);
  const cluster = useTestCluster("restore-repositories", {}, { env: s3.env });
  stopAfterCluster(s3);
  repository2.removeAfterCluster();
  const helpers = backupHelpers(cluster);
  const primary = (): NodeRef => cluster.service.nodes[0]!;
  const sql = <T = Record<string, unknown>>(text: string, node: NodeRef = primary()) => sqlOn<T>(node, cluster.service.secrets, text);
  const restored: NodeRef[] = [];
  const store = (index: number): ObjectStore => cluster.service.repositories.byIndex(index).repository.objects.store;

  afterAll(async () => {
    for (const node of restored) await cluster.service.driver.destroy(node).catch(() => undefined);
  });

  async function take(type: "full", repository?: number): Promise<BackupManifest> {
    const manifest = await (await cluster.service.backups.start(type, { repository })).done;
    expect(manifest).toMatchObject({ type, status: "completed" });
    await cluster.service.backups.waitForIdle();
    return manifest;
  }

  test("one object of the backup deleted and another corrupted in repository 1: restored from repository 2, exactly, and the event names repository 1's failure", async () => {
    expect(cluster.service.repositories.members.map((member) => member.settings.type)).toEqual(["s3", "dir"]);
    await sql("CREATE TABLE ledger (id serial PRIMARY KEY, body text)");
    await sql("INSERT INTO ledger (body) SELECT md5(g::text) FROM generate_series(1, 50000) g");
    const full = await take("full");
    await helpers.quietPoint("both-repositories");
    // Copied by the service into repository 2 (RELEVO_BACKUP_REPO=all), its WAL pushed to both.
    expect(await cluster.service.backups.copiesOf(full.id)).toEqual([
      expect.objectContaining({ repository: 1, status: "completed" }),
      expect.objectContaining({ repository: 2, status: "completed" }),
    ]);

    const content = await keysUnder(store(1), backupContentPrefix(0, full.id));
    expect(content.length).toBeGreaterThanOrEqual(2);
    const [deleted, corrupted] = [content[0]!, content[content.length - 1]!];
    await store(1).delete([deleted]);
    const bytes = await buffer(await store(1).get(corrupted));
    // A byte past the object's header flipped: the chunk holding it fails its check as it is read.
    bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
    await store(1).put(corrupted, bytes);

    const since = Date.now();
    const target: NodeRef = { name: "from-repo2", host: primary().host, port: await freePort() };
    restored.push(target);
    const outcome = await cluster.service.backups.restore({
      backupId: full.id,
      target,
      recoveryTarget: { kind: "name", name: "both-repositories" },
    });
    expect(outcome).toMatchObject({ repository: 2, manifest: { id: full.id }, fallbacks: [{ repository: 1, next: 2 }] });
    expect(await helpers.comparableDump(target)).toEqual(await helpers.comparableDump(primary()));

    const events = (await cluster.service.events.page({ first: 500 })).events.filter(
      (event) => event.kind === "restore:repository-failed" && Date.parse(event.occurredAt) >= since - 1000,
    );
    expect(events).toEqual([
      expect.objectContaining({
        severity: "warning",
        data: expect.objectContaining({
          backupId: full.id,
          target: target.name,
          repository: 1,
          next: 2,
          code: expect.stringMatching(/^(NOT_FOUND|REPOSITORY_CORRUPT)$/),
        }),
      }),
    ]);
    // Which object failed: the deleted or the corrupted one, whichever the restore read first.
    const failure = JSON.stringify(events[0]!.data);
    expect([deleted, corrupted].some((key) => failure.includes(key)) || failure.includes("is damaged")).toBe(true);
    expect(failure).not.toContain(s3.server().secretAccessKey);
  }, 300_000);

  test("a WAL segment missing in repository 1 and present in 2: a point-in-time restore from repository 1's backup reaches its target", async () => {
    // Repository 2 gets the WAL, not this backup: the restore reads the backup from repository 1 (the only copy).
    const full = await take("full", 1);
    await sql("CREATE TABLE journal (id int PRIMARY KEY, v text)");
    await sql("INSERT INTO journal SELECT g, md5(g::text) FROM generate_series(1, 2000) g");
    const inMissing = (await sql<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn"))[0]!.lsn;
    await sql("SELECT pg_switch_wal()");
    await sql("INSERT INTO journal SELECT g, md5(g::text) FROM generate_series(2001, 3000) g");
    const targetLsn = (await sql<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn"))[0]!.lsn;
    const atTarget = await sql("SELECT count(*)::int AS rows, md5(string_agg(v, ',' ORDER BY id)) AS sum FROM journal");
    await sql("SELECT pg_switch_wal()");
    await sql("INSERT INTO journal SELECT g, md5(g::text) FROM generate_series(3001, 4000) g");
    const switched = (await sql<{ lsn: string }>("SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn;
    // Pushed to both repositories by their own pushers.
    for (const { repository: each } of cluster.service.repositories.members) {
      await cluster.service.archiver.waitForArchived(1, full.startLsn, switched, 90_000, { in: each });
    }
    expect(await keysUnder(store(2), `manifests/${full.id}`)).toEqual([]);

    const missing = segmentName(1, segmentNumber(inMissing));
    expect(segmentNumber(inMissing)).toBeGreaterThan(segmentNumber(full.stopLsn!));
    // Nothing of it on this host: the archiver stopped and the spool emptied (else the spool would serve the segment,
    // and the pusher put it back into repository 1).
    const { archiver, repository } = cluster.service;
    await archiver.stop();
    try {
      for (const name of await repository.spool.names()) await repository.spool.remove(name);
      await store(1).delete([archiveKey(0, missing)]);
      // Told as an expiry tells it.
      cluster.service.repositories.byIndex(1).repository.archive.removed(missing);
      expect(await store(1).head(archiveKey(0, missing))).toBeNull();
      expect(await store(2).head(archiveKey(0, missing))).not.toBeNull();

      // The window per repository: repository 1's has the gap, repository 2's and the two together have none.
      const gap = { timeline: 1, from: missing, to: missing };
      expect((await cluster.service.backups.recoveryWindow({ repository: 1 })).gaps).toEqual([gap]);
      expect((await cluster.service.backups.recoveryWindow({ repository: 2 })).gaps).toEqual([]);
      expect((await cluster.service.backups.recoveryWindow()).gaps).toEqual([]);
      const answer = await graphqlRequest<{ one: { repository: number; gaps: unknown[] }; all: { repository: null; gaps: unknown[] } }>(
        cluster.url,
        "{ one: recoveryWindow(repository: 1) { repository gaps { timeline from to } } all: recoveryWindow { repository gaps { from } } }",
        { token: cluster.token("viewer") },
      );
      expect(answer.errors).toBeUndefined();
      expect(answer.data).toEqual({ one: { repository: 1, gaps: [gap] }, all: { repository: null, gaps: [] } });

      const target: NodeRef = { name: "wal-from-repo2", host: primary().host, port: await freePort() };
      restored.push(target);
      const outcome = await cluster.service.backups.restore({ backupId: full.id, target, recoveryTarget: { kind: "lsn", lsn: targetLsn } });
      // The backup from repository 1, its only copy; the segment repository 1 lacks from repository 2.
      expect(outcome).toMatchObject({ repository: 1, fallbacks: [] });
      expect(await sql("SELECT count(*)::int AS rows, md5(string_agg(v, ',' ORDER BY id)) AS sum FROM journal", target)).toEqual(atTarget);
    } finally {
      archiver.start();
    }
  }, 300_000);
});
