import { expect } from "@jest/globals";
import { readdir } from "node:fs/promises";
import path from "node:path";
import type { NodeRef } from "../../src/nodes/node-driver";
import { lsnToNumber } from "../../src/postgres/lsn";
import { SEGMENT_SIZE, segmentName, segmentNumber } from "../../src/postgres/wal-names";
import type { Repository } from "../../src/storage/repository";
import { HOLD_SLOT } from "../../src/wal/hold-slot";
import { graphqlRequest } from "../helpers/graphql-client";
import { stopAfterCluster, useS3Repository } from "../helpers/s3-server";
import { eventually, startTestCluster, useTestCluster } from "../helpers/service";
import { loadConfig } from "../../src/config/config";
import { createLogger } from "../../src/log";
import { startRelevo, type RelevoService } from "../../src/service";
import { sqlOn } from "../helpers/sql";

const BUCKET = "relevo-second";

/**
 * Two repositories, as an operator keeps a copy off the host: repository 1
 * the data home's directory, repository 2 a bucket of a real S3-protocol
 * server (s3rver on loopback). The WAL archive goes to both, each at its
 * own pace; the primary and the spool keep what either lacks.
 */
describe("the WAL archive in two repositories", () => {
  const s3Repository = useS3Repository({ bucket: BUCKET, prefix: "second/", index: 2 });
  const cluster = useTestCluster("wal-two-repositories", {}, { env: s3Repository.env });
  // After the cluster's (afterAll hooks run in the order they are declared).
  stopAfterCluster(s3Repository);
  const s3 = s3Repository.server;
  const primary = (): NodeRef => cluster.service.nodes[0]!;
  const sql = <T = Record<string, unknown>>(text: string) => sqlOn<T>(primary(), cluster.service.secrets, text);
  const second = (): Repository => cluster.service.repositories.byIndex(2).repository;
  const events = async (kind: string, since: number) =>
    (await cluster.service.events.page({ first: 500 })).events.filter((e) => e.kind === kind && Date.parse(e.occurredAt) >= since);
  /** The segment the hold slot's restart_lsn lies in: the primary keeps WAL from there on for the archive. */
  const holdSegment = async (): Promise<number> => {
    const rows = await sql<{ lsn: string }>(`SELECT restart_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = '${HOLD_SLOT}'`);
    return Math.floor(lsnToNumber(rows[0]!.lsn) / SEGMENT_SIZE);
  };
  /** The segment just completed by a switch, and its name on the primary's timeline. */
  const switchSegment = async (): Promise<{ name: string; segment: number }> => {
    const timeline = (await sql<{ timeline: number }>("SELECT timeline_id AS timeline FROM pg_control_checkpoint()"))[0]!.timeline;
    const lsn = (await sql<{ lsn: string }>("SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn;
    const segment = segmentNumber(lsn);
    return { name: segmentName(timeline, segment), segment };
  };
  /** The files s3rver keeps for the bucket whose path names `name` (asked of its directory: the store may be down). */
  const inBucket = async (name: string): Promise<boolean> => {
    const entries = await readdir(path.join(s3().directory, BUCKET), { recursive: true, withFileTypes: true });
    return entries.some((entry) => entry.isFile() && entry.name.includes(name));
  };

  test("every segment reaches both repositories, and the repositories query shows both in use", async () => {
    const { repositories } = cluster.service;
    expect(repositories.members.map((member) => member.index)).toEqual([1, 2]);
    await sql("CREATE TABLE two_archives (id int PRIMARY KEY, v text)");
    await sql("INSERT INTO two_archives SELECT g, md5(g::text) FROM generate_series(1, 2000) g");
    const { name } = await switchSegment();
    for (const { repository } of repositories.members) {
      await eventually(async () => ((await repository.archive.missing([name])).length === 0 ? true : undefined), {
        what: `${name} in ${repository.location}`,
        timeoutMs: 60_000,
      });
    }
    expect(await inBucket(name)).toBe(true);
    // Each pusher's status is shared once its pass ends (a moment after its put is visible).
    const shown = await eventually(
      async () => {
        const answer = await graphqlRequest<{ repositories: Array<Record<string, unknown>> }>(
          cluster.url,
          "{ repositories { index type inUse generation lastPushAt failingSince lastError } }",
          { token: cluster.token("viewer") },
        );
        expect(answer.errors).toBeUndefined();
        const listed = answer.data!.repositories;
        return listed.every((repository) => repository.lastPushAt !== null) ? listed : undefined;
      },
      { what: "a push shown for both repositories" },
    );
    expect(shown).toEqual([
      expect.objectContaining({ index: 1, type: "dir", inUse: true, generation: 0, failingSince: null, lastError: null }),
      expect.objectContaining({ index: 2, type: "s3", inUse: true, generation: 0, failingSince: null, lastError: null }),
    ]);
  }, 180_000);

  test("repository 2 down: repository 1 keeps receiving pushes, the hold slot and the spool wait for 2; back, it catches up and the slot moves on", async () => {
    const { archiver, repository: first } = cluster.service;
    const since = Date.now();
    await s3().stop();
    try {
      await sql("INSERT INTO two_archives SELECT g, md5(g::text) FROM generate_series(2001, 4000) g");
      const during = await switchSegment();
      await sql("INSERT INTO two_archives SELECT g, md5(g::text) FROM generate_series(4001, 6000) g");
      const later = await switchSegment();
      // Repository 1 takes them as if nothing were wrong (its pusher does not wait for repository 2's).
      for (const { name } of [during, later]) {
        await eventually(async () => ((await first.archive.missing([name])).length === 0 ? true : undefined), {
          what: `${name} in repository 1`,
          timeoutMs: 60_000,
        });
      }
      expect(await inBucket(during.name)).toBe(false);

      // The alert names repository 2 (after 30 s failing), and the cluster's health says so.
      const failing = await eventually(async () => (await events("archive:push-failing", since))[0], {
        what: "archive:push-failing",
        timeoutMs: 120_000,
      });
      expect(failing).toMatchObject({ severity: "critical", data: { repository: second().location } });
      const reasons = (await cluster.service.collector.pollNow()).healthReasons;
      expect(reasons.some((reason) => reason.includes(second().location))).toBe(true);

      // The primary keeps the WAL repository 2 lacks past a checkpoint, and so does the spool.
      await sql("CHECKPOINT");
      await archiver.releasePushed();
      expect(await holdSegment()).toBeLessThanOrEqual(during.segment);
      expect((await sql<{ name: string }>("SELECT name FROM pg_ls_waldir()")).map((row) => row.name)).toContain(during.name);
      expect(await first.spool.names()).toContain(during.name);
    } finally {
      if (!(await s3().running())) await s3().start();
    }

    // Back: repository 2 gets everything it missed, the alert clears, and the hold slot moves past it.
    const caughtUp = await switchSegment();
    await eventually(async () => ((await second().archive.missing([caughtUp.name])).length === 0 ? true : undefined), {
      what: `${caughtUp.name} in repository 2`,
      timeoutMs: 120_000,
    });
    expect(await inBucket(caughtUp.name)).toBe(true);
    await eventually(async () => (await events("archive:push-recovered", since))[0], { what: "archive:push-recovered", timeoutMs: 60_000 });
    await eventually(
      async () => {
        await archiver.releasePushed();
        return (await holdSegment()) > caughtUp.segment ? true : undefined;
      },
      { what: "the hold slot past the segments repository 2 caught up on", timeoutMs: 60_000 },
    );
  }, 400_000);

  test("repository 2 down across a receiver restart with the spool lost: repository 1 keeps receiving; back, 2 gets it all", async () => {
    const { archiver, repository: first } = cluster.service;
    let lastSwitched: string | null = null;
    await s3().stop();
    try {
      // The receiver restarts with the spool lost (Relevo's disk, or another host): its round reads each repository's
      // archive identity from the archive itself, and repository 2's cannot be read now.
      await archiver.stop();
      for (const name of await first.spool.names()) await first.spool.remove(name);
      archiver.start();
      await sql("INSERT INTO two_archives SELECT g, md5(g::text) FROM generate_series(6001, 8000) g");
      const { name } = await switchSegment();
      await eventually(async () => ((await first.archive.missing([name])).length === 0 ? true : undefined), {
        what: `${name} in repository 1 with repository 2 down`,
        timeoutMs: 90_000,
      });
      lastSwitched = name;
    } finally {
      if (!(await s3().running())) await s3().start();
    }
    // Back: repository 2 gets it too, received again from where the hold slot kept the WAL for it.
    await eventually(async () => ((await second().archive.missing([lastSwitched])).length === 0 ? true : undefined), {
      what: `${lastSwitched} in repository 2`,
      timeoutMs: 120_000,
    });
  }, 300_000);

  test("stopped while a round prepares: no receiver outlives the stop, and the stop returns", async () => {
    const { archiver } = cluster.service;
    const receivers = async () =>
      (await sql<{ n: number }>("SELECT count(*)::int AS n FROM pg_stat_replication WHERE application_name = 'relevo_archiver'"))[0]!.n;
    try {
      // Each stop lands at another point of the round's preparation (reads of both repositories, slot checks): before
      // the fix, one landing before the receiver was spawned left pg_receivewal running and the stop waiting for it.
      for (let attempt = 0; attempt < 12; attempt++) {
        await archiver.stop();
        archiver.start();
        await new Promise((resolve) => setTimeout(resolve, attempt * 15));
        const stopped = await Promise.race([
          archiver.stop().then(() => true),
          new Promise<false>((resolve) => setTimeout(() => resolve(false), 30_000)),
        ]);
        expect({ attempt, stopped }).toEqual({ attempt, stopped: true });
        await eventually(async () => ((await receivers()) === 0 ? true : undefined), { what: "no archiver connected", timeoutMs: 20_000 });
      }
    } finally {
      archiver.start();
    }
    // Started again, it streams.
    await eventually(async () => ((await receivers()) === 1 ? true : undefined), {
      what: "the archiver streaming again",
      timeoutMs: 60_000,
    });
  }, 300_000);
});

/**
 * A second repository whose store does not answer when the service starts
 * on a data home that knows its cluster: the service starts without it,
 * says so, keeps the WAL it lacks, and takes it in once it answers.
 */
describe("a repository down at the service's start", () => {
  const s3Repository = useS3Repository({ bucket: BUCKET, prefix: "", index: 2 });
  stopAfterCluster(s3Repository);
  const env = s3Repository.env;
  test("the service starts with it pending (event, health reason, the hold slot kept for it) and opens it once it answers", async () => {
    const first = await startTestCluster("wal-pending-repository", {}, { env });
    const { config } = first;
    const primary = first.service.nodes[0]!;
    const sql = <T = Record<string, unknown>>(text: string) => sqlOn<T>(primary, first.service.secrets, text);
    let again: RelevoService | null = null;
    let firstStopped = false;
    try {
      await first.stop();
      firstStopped = true;
      await s3Repository.server().stop();
      again = await startRelevo(loadConfig({ ...env }, { ...config }), createLogger({ level: "silent" }));
      const service = again;
      expect(service.repositories.members.map((member) => member.index)).toEqual([1]);
      expect(service.repositories.pending).toEqual([expect.objectContaining({ index: 2, error: expect.any(String) })]);
      const events = async (kind: string) => (await service.events.page({ first: 500 })).events.filter((e) => e.kind === kind);
      expect(await events("repository:pending")).toEqual([
        expect.objectContaining({ severity: "warning", data: expect.objectContaining({ repository: 2 }) }),
      ]);
      const reasons = (await service.collector.pollNow()).healthReasons;
      expect(reasons.some((reason) => reason.startsWith("repo2 (s3:") && reason.includes("is not opened"))).toBe(true);
      expect(JSON.stringify(reasons)).not.toContain(s3Repository.server().secretAccessKey);

      // WAL goes on into repository 1; the primary keeps it for repository 2.
      const timeline = (await sql<{ timeline: number }>("SELECT timeline_id AS timeline FROM pg_control_checkpoint()"))[0]!.timeline;
      await sql("CREATE TABLE while_pending AS SELECT g AS id FROM generate_series(1, 5000) g");
      const switched = (await sql<{ lsn: string }>("SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn;
      const kept = segmentNumber(switched);
      await service.archiver.waitForArchived(timeline, switched, switched, 90_000);
      await sql("CHECKPOINT");
      await service.archiver.releasePushed();
      const hold = async () =>
        Math.floor(
          lsnToNumber(
            (await sql<{ lsn: string }>(`SELECT restart_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = '${HOLD_SLOT}'`))[0]!
              .lsn,
          ) / SEGMENT_SIZE,
        );
      expect(await hold()).toBeLessThanOrEqual(kept);

      // Back: it joins (within the retry interval), gets the WAL, and the hold slot moves on.
      await s3Repository.server().start();
      await eventually(async () => ((await events("repository:opened"))[0] ? true : undefined), {
        what: "repository:opened",
        timeoutMs: 60_000,
      });
      const joined = service.repositories.byIndex(2).repository;
      const name = segmentName(timeline, kept);
      await eventually(async () => ((await joined.archive.missing([name])).length === 0 ? true : undefined), {
        what: `${name} in repository 2`,
        timeoutMs: 60_000,
      });
      await eventually(
        async () => {
          await service.archiver.releasePushed();
          return (await hold()) > kept ? true : undefined;
        },
        { what: "the hold slot past what repository 2 caught up on", timeoutMs: 60_000 },
      );
      expect((await service.collector.pollNow()).healthReasons.filter((reason) => reason.includes("is not opened"))).toEqual([]);
    } finally {
      if (!firstStopped) await first.stop();
      await again?.stop({ reason: "test finished" });
      if (!(await s3Repository.server().running())) await s3Repository.server().start();
    }
  }, 400_000);
});
