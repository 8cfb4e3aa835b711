import { expect } from "@jest/globals";
import { nodeRestoreCommand } from "../../src/restore/node-wal";
import { ErrorCode, RelevoError } from "../../src/errors";
import { readdir } from "node:fs/promises";
import { createServer } from "node:net";
import path from "node:path";
import { isFenced, readFenceMarker } from "../../src/postgres/fence-marker";
import { parseSegmentName, segmentName, segmentNumber } from "../../src/postgres/wal-names";
import type { NodeRef } from "../../src/nodes/node-driver";
import type { FailoverOperations } from "../../src/failover/operations";
import { ROLE_REPLICATION } from "../../src/postgres/managed-settings";
import { claimNodeTarget } from "../../src/restore/target-claim";
import { failoverHelpers } from "../helpers/failover";
import { graphqlRequest } from "../helpers/graphql-client";
import { startLibpqWriter } from "../helpers/libpq-writer";
import { eventually, useTestCluster } from "../helpers/service";
import { sleep } from "../../src/util/sleep";
import { archivePrefix, walFileNameOf } from "../../src/repository/repository-layout";

/**
 * How long past the detection window a failover may take to begin on a
 * machine shared with other suites (see failover-after-switchover).
 */
const DETECTION_ALLOWANCE_MS = 4000;

/**
 * The failover machinery's unhappy paths, on one two-node cluster (local
 * driver): switchovers refused or called off, a primary dying with no
 * replica to promote, maintenance mode, a rejoin that fails, pg_rewind that
 * fails. Each test leaves node1 the primary and node2 its eligible replica.
 */
describe("failover's unhappy paths", () => {
  const cluster = useTestCluster("failover-unhappy", {
    // The catch-up limit of a switchover, shortened so that calling one off costs seconds, not half a minute.
    switchoverCatchUpTimeoutMs: 2000,
    // Maintenance must be what holds a failback back: without it, one would start a second after node1 is in sync.
    autoFailback: true,
    autoFailbackAfterMs: 1000,
  });
  const { node, sql, state, events, primaryNow, streamingFrom } = failoverHelpers(cluster);
  const failover = () => cluster.service.failover;

  /** node1 the primary, no operation in flight, node2 streaming from it and eligible. */
  const baseline = async () =>
    eventually(
      async () => {
        const current = await state();
        return current.primary === "node1" &&
          current.eligible.includes("node2") &&
          (await failover().operation()) === null &&
          (await streamingFrom(node("node2"))) === node("node1").port
          ? true
          : undefined;
      },
      { what: "node1 primary, node2 streaming and eligible", timeoutMs: 60000 },
    );

  /**
   * Freezes `standby`'s WAL receiver (SIGSTOP), as a stalled link would:
   * pg_stat_wal_receiver still says streaming, but nothing more is received
   * or acknowledged. Returns the thaw (idempotent).
   */
  const freezeReceiver = async (standby: NodeRef): Promise<() => void> => {
    const pid = (await sql<{ pid: number | null }>(standby, "SELECT pid FROM pg_stat_wal_receiver"))[0]?.pid;
    if (!pid) throw new Error(`${standby.name} has no WAL receiver to freeze`);
    process.kill(pid, "SIGSTOP");
    let frozen = true;
    return () => {
      if (frozen) process.kill(pid, "SIGCONT");
      frozen = false;
    };
  };

  const refusal = async (promise: Promise<unknown>): Promise<RelevoError> => {
    const outcome = await promise.then(
      () => new Error("it was not refused"),
      (error: Error) => error,
    );
    expect(outcome).toBeInstanceOf(RelevoError);
    return outcome as RelevoError;
  };

  /**
   * After a change of primary, the archive's segment of the old timeline
   * that runs past the switch point is off the new primary's history: it is
   * moved to wal/diverged/<time>/ (kept, not replayed), and the archive
   * resumes with the new timeline's copy of that segment.
   */
  const archiveSetAsideOldTimeline = async () => {
    const history = (
      await sql<{ history: string }>(
        node("node2"),
        `SELECT pg_read_file('pg_wal/' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) || '.history') AS history`,
      )
    )[0]!.history;
    const [previous, switchLsn] = history.trim().split("\n").at(-1)!.split("\t");
    const timeline = Number(previous) + 1;
    const segment = segmentNumber(switchLsn!);
    const walDir = cluster.service.repository.spoolDir;
    const setAside = await eventually(
      async () => {
        const folders = await readdir(path.join(walDir, "diverged")).catch(() => [] as string[]);
        const received = (await Promise.all(folders.map((folder) => readdir(path.join(walDir, "diverged", folder))))).flat();
        // A segment pushed (and trimmed from the spool) before the failover is set aside as an object.
        const pushed = (await cluster.service.repository.objects.list("diverged/")).map((info) => path.posix.basename(info.key));
        const files = [...received, ...pushed];
        return files.some((file) => file.startsWith(segmentName(timeline - 1, segment))) ? files : undefined;
      },
      { what: `the old timeline's segment ${segmentName(timeline - 1, segment)} set aside` },
    );
    expect(setAside.every((file) => parseSegmentName(file.replace(/\.partial$/, ""))?.timeline === timeline - 1)).toBe(true);
    // Nor does the repository's archive hold a segment of the old timeline past the switch (pushed ones set aside too).
    const { objects, generation } = cluster.service.repository;
    const pushedPast = (await objects.list(archivePrefix(generation)))
      .map((info) => parseSegmentName(walFileNameOf(generation, info.key) ?? ""))
      .filter((parsed) => parsed !== null && parsed.timeline === timeline - 1 && parsed.segment >= segment);
    expect(pushedPast).toEqual([]);
    await eventually(
      async () => ((await readdir(walDir)).some((name) => name.startsWith(segmentName(timeline, segment))) ? true : undefined),
      { what: `the archive resumed on timeline ${timeline} at segment ${segment}` },
    );
  };

  beforeAll(async () => {
    await sql(node("node1"), "CREATE TABLE acked (id int PRIMARY KEY, at timestamptz DEFAULT now())");
    await baseline();
  });

  test("a switchover to a target not streaming, or more than 16 MiB behind, is refused with PRECONDITION_FAILED; nothing changes", async () => {
    const since = Date.now();
    await cluster.service.driver.stop(node("node2"), { mode: "fast", timeoutMs: 30000 });
    try {
      const stopped = await refusal(failover().switchover("node2"));
      expect(stopped.code).toBe(ErrorCode.PreconditionFailed);
      expect(stopped.message).toMatch(/node2 is not a replica streaming from node1/);
    } finally {
      await cluster.service.driver.start(node("node2"), { timeoutMs: 30000 });
    }
    await eventually(async () => ((await streamingFrom(node("node2"))) === node("node1").port ? true : undefined), {
      what: "node2 streaming again",
    });

    const thaw = await freezeReceiver(node("node2"));
    try {
      // Two segment switches with a write between them: the primary is at
      // least 16 MiB past anything node2 has received. synchronous_commit =
      // local: these commits must not wait for the frozen standby.
      await sql(
        node("node1"),
        `SET synchronous_commit = local;
         CREATE TABLE filler (n int); SELECT pg_switch_wal();
         INSERT INTO filler VALUES (1); SELECT pg_switch_wal();
         INSERT INTO filler VALUES (2); SELECT pg_switch_wal();`,
      );
      const behind = await refusal(failover().switchover("node2"));
      expect(behind.code).toBe(ErrorCode.PreconditionFailed);
      expect(behind.message).toMatch(/node2 is \d+ bytes behind \(at most 16777216 for a switchover\)/);
    } finally {
      thaw();
    }
    // Refused before anything began: no journal, no stage, node1 writing as before.
    expect(await events("failover:detected", since)).toEqual([]);
    expect(await failover().operation()).toBeNull();
    expect((await state()).primary).toBe("node1");
    await sql(node("node1"), "DROP TABLE filler");
    await baseline();
  });

  test("a switchover whose target does not receive the last record in time is called off: the old primary is unfenced and restarted unchanged, nothing lost", async () => {
    const since = Date.now();
    const writer = startLibpqWriter(cluster.service);
    let thaw: (() => void) | null = null;
    try {
      await eventually(() => (writer.acknowledgedSoFar() >= 5 ? true : undefined), { what: "writes before the switchover" });
      // node2 streams (the precondition holds) but will not receive node1's shutdown checkpoint.
      thaw = await freezeReceiver(node("node2"));
      const calledOff = await refusal(failover().switchover("node2"));
      expect(calledOff.code).toBe(ErrorCode.PreconditionFailed);
      expect(calledOff.message).toMatch(/node2 did not receive node1's last record \(.+\) within 2000 ms; node1 restarted as the primary/);
      // Before node2 comes back: node1 is the primary again on its own, writable, its fence lifted; the journal is closed.
      expect(await failover().operation()).toBeNull();
      const recorded = await state();
      expect(recorded.primary).toBe("node1");
      expect(recorded.fenced).toEqual([]);
      expect(await isFenced(cluster.service.driver, node("node1"))).toBe(false);
      const [role] = await sql<{ recovery: boolean; readOnly: string }>(
        node("node1"),
        "SELECT pg_is_in_recovery() AS recovery, current_setting('default_transaction_read_only') AS \"readOnly\"",
      );
      expect(role).toEqual({ recovery: false, readOnly: "off" });
      const failed = await events("failover:failed", since);
      expect(failed).toHaveLength(1);
      expect(failed[0]).toMatchObject({ node: "node1", data: { kind: "switchover", status: "failed" } });
      expect(await events("failover:promoted", since)).toEqual([]);
    } finally {
      thaw?.();
    }
    const calledOffAt = Date.now();
    // Writes go on on node1 (once node2 streams again, or has left the synchronous set).
    await eventually(() => (writer.firstAckFrom(node("node1").port, calledOffAt) !== null ? true : undefined), {
      what: "a write acknowledged by node1 after the switchover was called off",
    });
    const report = await writer.stop();
    const present = new Set((await sql<{ id: number }>(node("node1"), "SELECT id FROM acked")).map((row) => row.id));
    expect(report.acknowledged.length).toBeGreaterThan(5);
    expect(report.acknowledged.filter((id) => !present.has(id))).toEqual([]);
    expect(new Set(report.ackPorts)).toEqual(new Set([node("node1").port]));
    await baseline();
  });

  test("the primary dies with no eligible replica: one failover:failed (no eligible replica), the old primary left unfenced, no new try within the hold-off", async () => {
    // node2 stops acknowledging: it leaves the synchronous set, so it is no longer eligible.
    const thaw = await freezeReceiver(node("node2"));
    try {
      await eventually(async () => (!(await state()).eligible.includes("node2") ? true : undefined), { what: "node2 no longer eligible" });
    } finally {
      thaw();
    }
    const since = Date.now();
    await cluster.service.driver.kill(node("node1"));
    try {
      const failed = await eventually(
        async () => {
          const found = await events("failover:failed", since);
          return found.length > 0 ? found[0]! : undefined;
        },
        { what: "failover:failed", timeoutMs: 30000 },
      );
      expect(failed).toMatchObject({ node: "node1", data: { kind: "failover", trigger: "automatic", status: "failed" } });
      expect((failed.data as { error: string }).error).toMatch(/no eligible replica: node2/);
      // Checks keep failing, and a retry would come after one more detection window (3 × 1000 ms): the hold-off (30 s) keeps it back.
      await new Promise((resolve) => setTimeout(resolve, 5000));
      expect(await events("failover:detected", since)).toHaveLength(1);
      expect(await events("failover:failed", since)).toHaveLength(1);
      // Nothing happened to the old primary: not fenced, still the recorded primary, free to come back.
      const recorded = await state();
      expect(recorded.primary).toBe("node1");
      expect(recorded.fenced).toEqual([]);
      expect(await isFenced(cluster.service.driver, node("node1"))).toBe(false);
    } finally {
      await cluster.service.driver.start(node("node1"), { timeoutMs: 30000 });
    }
    await baseline();
  });

  test("maintenance mode: no automatic failback; a split brain is still fenced and not rejoined; a failed rejoin is node:rejoin-failed; once off, the node is rejoined (pg_rewind failing: reseeded) and failed back; the old timeline's WAL set aside", async () => {
    const since = Date.now();
    await failover().setMaintenance(true);
    try {
      const switched = await failover().switchover("node2");
      expect(switched).toMatchObject({ status: "completed", to: "node2" });
      await archiveSetAsideOldTimeline();
      // node1 is in sync, and would be failed back to after 1 s: maintenance holds it.
      await eventually(async () => ((await state()).eligible.includes("node1") ? true : undefined), { what: "node1 eligible" });
      await new Promise((resolve) => setTimeout(resolve, 3000));
      expect((await state()).eligible).toContain("node1");
      expect(await primaryNow()).toBe("node2");
      expect((await events("failover:detected", since)).map((e) => (e.data as { kind: string }).kind)).toEqual(["switchover"]);

      // A second writable node: fenced at once, maintenance or not.
      await sql(node("node1"), "SELECT pg_promote()");
      const fencedEvent = await eventually(async () => (await events("node:fenced", since)).find((e) => e.node === "node1"), {
        what: "node1 fenced as a split brain",
      });
      expect(fencedEvent.data).toMatchObject({ reason: "split brain" });
      expect((await events("cluster:split-brain", since)).map((e) => e.node)).toEqual(["node1"]);
      expect((await state()).fenced).toEqual(["node1"]);
      // Several rounds later: still fenced, not rejoined.
      await new Promise((resolve) => setTimeout(resolve, 3000));
      expect((await state()).fenced).toEqual(["node1"]);
      expect(await events("node:rejoined", since)).toEqual([]);
      expect((await cluster.service.driver.state(node("node1"))).phase).toBe("stopped");

      // A manual rejoin while the primary does not answer fails, and says so.
      await cluster.service.driver.pause(node("node2"));
      try {
        await expect(failover().rejoin("node1")).rejects.toThrow();
      } finally {
        await cluster.service.driver.resume(node("node2"));
      }
      const rejoinFailed = await events("node:rejoin-failed", since);
      expect(rejoinFailed.map((e) => e.node)).toEqual(["node1"]);
      expect(rejoinFailed[0]).toMatchObject({ severity: "critical" });
      expect(await failover().operation()).toBeNull();
      expect((await state()).fenced).toEqual(["node1"]);

      // node1's WAL lost: pg_rewind (its crash recovery first) cannot run, so the rejoin must seed it again.
      const wal = await cluster.service.driver.listFiles(node("node1"), "pg_wal");
      const segments = wal.filter((entry) => /^pg_wal\/[0-9A-F]{24}$/.test(entry.path)).map((entry) => entry.path);
      expect(segments.length).toBeGreaterThan(0);
      await cluster.service.driver.removeFiles(node("node1"), segments);
    } finally {
      await failover().setMaintenance(false);
    }
    const rejoined = await eventually(async () => (await events("node:rejoined", since)).find((e) => e.node === "node1"), {
      what: "node1 rejoined once maintenance is off",
      timeoutMs: 60000,
    });
    expect(rejoined.data).toMatchObject({ method: "reseed", upstream: "node2" });
    // And, node1 in sync again, the automatic failback maintenance held back.
    await eventually(async () => ((await primaryNow()) === "node1" ? true : undefined), {
      what: "failed back to node1",
      timeoutMs: 60000,
    });
    const completed = (await events("failover:completed", since)).map((e) => e.data as { kind: string; trigger: string });
    expect(completed).toEqual(expect.arrayContaining([expect.objectContaining({ kind: "failback", trigger: "automatic" })]));
    await baseline();
  });

  /**
   * Lowers max_slot_wal_keep_size on node1 to one segment, runs `away` (the
   * slots' holders stopped), then writes rows and switches segments, with a
   * checkpoint each (PostgreSQL invalidates slots at checkpoints), until
   * every slot in `lost` is. Returns the next free row id; the setting is
   * put back by the returned reset.
   */
  const loseSlots = async (lost: readonly string[], away: () => Promise<void>) => {
    const primary = node("node1");
    await sql(primary, "ALTER SYSTEM SET max_slot_wal_keep_size = '16MB'");
    await sql(primary, "SELECT pg_reload_conf()");
    const reset = async () => {
      await sql(primary, "ALTER SYSTEM RESET max_slot_wal_keep_size");
      await sql(primary, "SELECT pg_reload_conf()");
    };
    await away();
    let id = (await sql<{ next: number }>(primary, "SELECT coalesce(max(id), 0) + 1 AS next FROM acked"))[0]!.next;
    await eventually(
      async () => {
        // Committed locally: a stopped standby would hold the commit back until the monitor drops it from the
        // synchronous set (a detection window), which is not what these tests are about.
        await sql(primary, `SET synchronous_commit = local; INSERT INTO acked (id) VALUES (${id++})`);
        await sql(primary, "SELECT pg_switch_wal()");
        await sql(primary, "CHECKPOINT");
        const statuses = await sql<{ slot_name: string; wal_status: string | null }>(
          primary,
          "SELECT slot_name, wal_status FROM pg_replication_slots",
        );
        return lost.every((name) => statuses.some((slot) => slot.slot_name === name && slot.wal_status === "lost")) ? true : undefined;
      },
      { what: `slots ${lost.join(", ")} lost` },
    );
    return { nextId: id, reset };
  };

  /** The archive's complete segments: in the repository, or received into the spool (which keeps only what it lacks). */
  const completeSegments = async () =>
    [...new Set([...(await cluster.service.repository.spool.names()), ...(await cluster.service.repository.archive.names())])]
      .map((name) => parseSegmentName(name))
      .filter((parsed) => parsed !== null);

  /** node2 has every row node1 has. */
  const everyRowOnNode2 = async () => {
    const rows = "SELECT count(*)::int AS count, max(id) AS last FROM acked";
    const onPrimary = (await sql(node("node1"), rows))[0];
    await eventually(async () => (JSON.stringify((await sql(node("node2"), rows))[0]) === JSON.stringify(onPrimary) ? true : undefined), {
      what: "every row on node2",
    });
    return onPrimary as { count: number; last: number };
  };

  test("a replica's slot invalidated by max_slot_wal_keep_size while the archive holds what it missed: it catches up from the archive and streams again, not seeded again", async () => {
    await baseline();
    const since = Date.now();
    const { driver, repository } = cluster.service;
    const { nextId, reset } = await loseSlots(["relevo_node2"], () => driver.stop(node("node2"), { mode: "fast", timeoutMs: 30000 }));
    try {
      await driver.start(node("node2"), { timeoutMs: 30000 });
      const slotLost = await eventually(async () => (await events("replication:slot-lost", since)).find((e) => e.node === "node2"), {
        what: "replication:slot-lost for node2",
      });
      expect(slotLost).toMatchObject({ severity: "critical", data: { slot: "relevo_node2", upstream: "node1", action: "bridge" } });
      await eventually(async () => ((await streamingFrom(node("node2"))) === node("node1").port ? true : undefined), {
        what: "node2 streaming again",
      });
      expect(await everyRowOnNode2()).toMatchObject({ last: nextId - 1 });
      // The same node, bridged: its restore_command read what Relevo fed into its own relevo_wal/ (never the repository's
      // path), the feed stopped once it streamed, its slot is reserved again, nothing was seeded.
      const command = (await sql<{ command: string }>(node("node2"), "SELECT current_setting('restore_command') AS command"))[0]!.command;
      expect(command).toBe(nodeRestoreCommand("standby"));
      expect(command).not.toContain(repository.root);
      await eventually(async () => ((await driver.readFile(node("node2"), "relevo_wal/expected"))?.length === 0 ? true : undefined), {
        what: "the feed into node2 stopped",
      });
      const status = await sql<{ wal_status: string }>(
        node("node1"),
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'relevo_node2'",
      );
      expect(status[0]?.wal_status).not.toBe("lost");
      expect((await events("replication:slot-lost", since)).map((e) => (e.data as { action: string }).action)).toEqual(["bridge"]);
      expect(await events("node:rejoined", since)).toEqual([]);
    } finally {
      await reset();
    }
    await baseline();
  });

  test("slots invalidated by max_slot_wal_keep_size: the archive's is one archive:gap, made again, and archiving resumes past the hole; the replica's, which the archive cannot carry, is seeded again and streams with every row", async () => {
    await baseline();
    const since = Date.now();
    const primary = node("node1");
    const { archiver, driver } = cluster.service;
    let archivedUpTo = -1;
    // Both holders away: the archiver stopped (its slot kept, as when its instance dies meanwhile), node2 stopped.
    const { nextId, reset } = await loseSlots(["relevo_archive", "relevo_archive_hold", "relevo_node2"], async () => {
      await archiver.stop();
      await driver.stop(node("node2"), { mode: "fast", timeoutMs: 30000 });
      archivedUpTo = Math.max(...(await completeSegments()).map((parsed) => parsed.segment));
    });
    let id = nextId;
    try {
      const timeline = parseInt(
        (await sql<{ file: string }>(primary, "SELECT pg_walfile_name(pg_current_wal_lsn()) AS file"))[0]!.file.slice(0, 8),
        16,
      );
      archiver.start();
      await driver.start(node("node2"), { timeoutMs: 30000 });

      // The archive: the hole reported at once, from the segment after the last one archived complete.
      const gapEvent = await eventually(async () => (await events("archive:gap", since))[0], { what: "archive:gap" });
      const gap = gapEvent.data as { timeline: number; from: string; to: string };
      expect(gapEvent.severity).toBe("critical");
      expect(gap.timeline).toBe(timeline);
      expect(parseSegmentName(gap.from)).toEqual({ timeline, segment: archivedUpTo + 1 });
      const resumedAt = parseSegmentName(gap.to)!.segment + 1;
      expect(resumedAt).toBeGreaterThan(archivedUpTo + 1);
      // Archiving resumes past it, on a slot made again; the hole stays a hole.
      await sql(primary, `SET synchronous_commit = local; INSERT INTO acked (id) VALUES (${id++})`);
      await sql(primary, "SELECT pg_switch_wal()");
      await eventually(async () => ((await completeSegments()).some((parsed) => parsed.segment === resumedAt) ? true : undefined), {
        what: `segment ${resumedAt} archived`,
      });
      expect((await completeSegments()).filter((parsed) => parsed.segment > archivedUpTo && parsed.segment < resumedAt)).toEqual([]);
      const archiveSlot = await sql<{ wal_status: string }>(
        primary,
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'relevo_archive'",
      );
      expect(archiveSlot[0]?.wal_status).not.toBe("lost");
      // Found again by the archive monitor, it is not reported twice; the health says so until a full backup.
      await cluster.service.archiveMonitor.check();
      // The window reaches past the hole once the segment after it is summarised (its latest point is a commit the
      // summaries saw, never an object's arrival): asked until then.
      await eventually(
        async () =>
          (await cluster.service.backups.recoveryWindow()).gaps.some((each) => each.from === gap.from && each.to === gap.to)
            ? true
            : undefined,
        { what: `the recovery window's gap ${gap.from}–${gap.to}`, timeoutMs: 60000 },
      );
      expect((await cluster.service.backups.recoveryWindow()).gaps).toContainEqual(gap);
      expect((await events("archive:gap", since)).length).toBe(1);
      const snapshot = await cluster.service.collector.pollNow();
      expect(snapshot.healthReasons.some((reason) => reason.startsWith(`the WAL archive has a gap (${gap.from}`))).toBe(true);

      // The replica: it cannot stream, and the archive cannot carry it across the hole: seeded again.
      const slotLost = await eventually(async () => (await events("replication:slot-lost", since)).find((e) => e.node === "node2"), {
        what: "replication:slot-lost for node2",
      });
      expect(slotLost).toMatchObject({ severity: "critical", data: { slot: "relevo_node2", upstream: "node1", action: "reseed" } });
      const rejoined = await eventually(async () => (await events("node:rejoined", since)).find((e) => e.node === "node2"), {
        what: "node2 seeded again",
        timeoutMs: 60000,
      });
      expect(rejoined.data).toMatchObject({ method: "reseed", upstream: "node1" });
      expect(await streamingFrom(node("node2"))).toBe(primary.port);
      expect(await everyRowOnNode2()).toMatchObject({ last: id - 1 });
    } finally {
      await reset();
      archiver.start();
      if ((await driver.state(node("node2"))).phase === "stopped") await driver.start(node("node2"), { timeoutMs: 30000 });
    }
    await baseline();
  });

  test("the archive's slot gone while the archiver is away (its instance died right after dropping the lost slot) and the WAL past the archive's end removed: a fresh archiver reports the hole once as archive:gap and resumes past it", async () => {
    await baseline();
    const since = Date.now();
    const primary = node("node1");
    const { archiver } = cluster.service;
    await archiver.stop();
    let id = (await sql<{ next: number }>(primary, "SELECT coalesce(max(id), 0) + 1 AS next FROM acked"))[0]!.next;
    try {
      const archivedUpTo = Math.max(...(await completeSegments()).map((parsed) => parsed.segment));
      const timeline = parseInt(
        (await sql<{ file: string }>(primary, "SELECT pg_walfile_name(pg_current_wal_lsn()) AS file"))[0]!.file.slice(0, 8),
        16,
      );
      // pg_receivewal's walsender may take a moment to exit: the slot is dropped once it is inactive. Its hold slot
      // too (dropped by hand), else the primary keeps the WAL for it.
      await eventually(
        async () => {
          await sql(
            primary,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name IN ('relevo_archive', 'relevo_archive_hold') AND NOT active",
          );
          return (await sql(primary, "SELECT 1 FROM pg_replication_slots WHERE slot_name IN ('relevo_archive', 'relevo_archive_hold')"))
            .length === 0
            ? true
            : undefined;
        },
        { what: "the archive's slots dropped" },
      );
      const firstMissing = segmentName(timeline, archivedUpTo + 1);
      await eventually(
        async () => {
          await sql(primary, `SET synchronous_commit = local; INSERT INTO acked (id) VALUES (${id++})`);
          await sql(primary, "SELECT pg_switch_wal()");
          await sql(primary, "CHECKPOINT");
          return (await sql(primary, `SELECT 1 FROM pg_ls_waldir() WHERE name = '${firstMissing}'`)).length === 0 ? true : undefined;
        },
        { what: `${firstMissing} removed from node1's pg_wal` },
      );
      archiver.start();
      const gapEvent = await eventually(async () => (await events("archive:gap", since))[0], { what: "archive:gap" });
      const gap = gapEvent.data as { timeline: number; from: string; to: string };
      expect(gap.from).toBe(firstMissing);
      const resumedAt = parseSegmentName(gap.to)!.segment + 1;
      await sql(primary, `SET synchronous_commit = local; INSERT INTO acked (id) VALUES (${id++})`);
      await sql(primary, "SELECT pg_switch_wal()");
      await eventually(async () => ((await completeSegments()).some((parsed) => parsed.segment === resumedAt) ? true : undefined), {
        what: `segment ${resumedAt} archived`,
      });
      expect((await events("archive:gap", since)).length).toBe(1);
    } finally {
      archiver.start();
    }
    await baseline();
  });

  test("a reseed of a replica whose name another process claims (a restore into its directory) is refused before the replica is touched", async () => {
    await baseline();
    const { driver } = cluster.service;
    const { operations } = (failover() as unknown as { deps: { operations: FailoverOperations } }).deps;
    const before = await state();
    const claim = await claimNodeTarget(driver, node("node2"), { purpose: "restore into its directory (a test)" });
    try {
      await expect(operations.reseed("node2", { reason: "a test" })).rejects.toMatchObject({
        code: ErrorCode.TargetNotEmpty,
        message: expect.stringContaining("is being made by another process"),
      });
    } finally {
      await claim.release();
    }
    // Nothing changed: node2 runs, streams, and stays in the set and eligible.
    expect(await streamingFrom(node("node2"))).toBe(node("node1").port);
    const after = await state();
    expect({ syncSet: after.syncSet, eligible: after.eligible, reseeding: after.reseeding ?? [] }).toEqual({
      syncSet: before.syncSet,
      eligible: before.eligible,
      reseeding: before.reseeding ?? [],
    });
    expect(before.eligible).toContain("node2");
  });

  /** The topology as the API shows it: which nodes are being re-made, and the health reasons. */
  const remade = async () => {
    const response = await graphqlRequest<{ cluster: { healthReasons: string[]; nodes: Array<{ name: string; reseeding: boolean }> } }>(
      cluster.url,
      "{ cluster { healthReasons nodes { name reseeding } } }",
      { token: cluster.token("viewer") },
    );
    return response.data!.cluster;
  };

  /**
   * Runs `failing` with maintenance on (it holds the monitor's rejoins and
   * repairs back, not its fencing) and pg_basebackup refused (the
   * replication role may not log in): a seed of node2 fails there. Then
   * both lifted, node2 must be seeded again by the monitor, once: streaming
   * from node1 with every row, no longer recorded as being re-made.
   */
  const seedRefusedThenSeededAgain = async (since: number, failing: () => Promise<void>) => {
    const primary = node("node1");
    await failover().setMaintenance(true);
    try {
      await sql(primary, `ALTER ROLE ${ROLE_REPLICATION} NOLOGIN`);
      await failing();
      expect((await events("node:rejoin-failed", since)).map((event) => event.node)).toEqual(["node2"]);
      expect((await cluster.service.driver.state(node("node2"))).phase).toBe("absent");
      expect((await state()).reseeding).toEqual(["node2"]);
      // Shown, once the failed operation's journal is closed: on the node in the API's topology, and as a health reason.
      const recordedReason = "node2 was destroyed to be seeded again and is not seeded yet: the failover monitor seeds it again";
      await eventually(
        async () => {
          const seen = await remade();
          return seen.nodes.find((n) => n.name === "node2")?.reseeding && seen.healthReasons.includes(recordedReason) ? true : undefined;
        },
        { what: "node2 shown as being re-made" },
      );
    } finally {
      await sql(primary, `ALTER ROLE ${ROLE_REPLICATION} LOGIN`);
      await failover().setMaintenance(false);
    }
    const rejoined = await eventually(async () => (await events("node:rejoined", since)).find((e) => e.node === "node2"), {
      what: "node2 seeded again by the monitor",
      timeoutMs: 60000,
    });
    expect(rejoined.data).toMatchObject({ method: "reseed", upstream: "node1" });
    expect((await state()).reseeding).toEqual([]);
    expect(await streamingFrom(node("node2"))).toBe(primary.port);
    await everyRowOnNode2();
    await eventually(async () => ((await remade()).nodes.every((n) => !n.reseeding) ? true : undefined), { what: "no node shown re-made" });
  };

  test("a reseed that fails once it destroyed the replica (pg_basebackup refused): the node stays recorded, its new slot dropped, and the monitor seeds it again", async () => {
    await baseline();
    const since = Date.now();
    // The monitor's operations, as its lost-slot repair calls them (not part of the service's surface).
    const { operations } = (failover() as unknown as { deps: { operations: FailoverOperations } }).deps;
    await seedRefusedThenSeededAgain(since, async () => {
      await expect(operations.reseed("node2", { reason: "a test" })).rejects.toThrow(/pg_basebackup|not permitted to log in/);
      expect(await sql(node("node1"), "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'relevo_node2'")).toEqual([]);
    });
    await baseline();
  });

  test("a rejoin whose pg_rewind fails and whose seed fails too (pg_basebackup refused): the fenced node stays recorded, and the monitor seeds it again and lifts its fence", async () => {
    await baseline();
    const since = Date.now();
    const { driver } = cluster.service;
    await seedRefusedThenSeededAgain(since, async () => {
      // node2 writable: fenced as a split brain (stopped at once, so its control file is a primary's), its WAL lost so pg_rewind cannot run.
      await sql(node("node2"), "SELECT pg_promote()");
      await eventually(async () => ((await state()).fenced.includes("node2") ? true : undefined), { what: "node2 fenced" });
      const wal = await driver.listFiles(node("node2"), "pg_wal");
      await driver.removeFiles(
        node("node2"),
        wal.filter((entry) => /^pg_wal\/[0-9A-F]{24}$/.test(entry.path)).map((entry) => entry.path),
      );
      await expect(failover().rejoin("node2")).rejects.toThrow(/pg_basebackup|not permitted to log in/);
      expect((await state()).fenced).toEqual(["node2"]);
    });
    expect((await state()).fenced).toEqual([]);
    await baseline();
  });
});

/**
 * Asynchronous mode, two nodes: a switchover's new primary lost once it is
 * recorded as the primary, before the old primary was started as its
 * standby (in asynchronous mode that happens only after the promotion).
 * Nobody is left to ask but the old primary, stopped and fenced by the
 * switchover; it holds every commit acknowledged before the switchover, and
 * lacks only what the new primary wrote since — a loss a failover is
 * allowed within the lag limit, reported in bytes.
 */
describe("a switchover's new primary lost while the old primary is still stopped (asynchronous, two nodes)", () => {
  // No automatic rejoin: the lost node's rewind is another test's subject, and would only lengthen this one.
  // A short lease: a failover left in the journal is adopted and resumed within seconds.
  const cluster = useTestCluster("unhappy-async", { synchronous: false, autoRejoin: false, leaseTtlMs: 2000 });
  const { node, sql, state, events, streamingFrom } = failoverHelpers(cluster);

  /**
   * A switchover to node2, under way, once node2 is recorded as the primary. Begun
   * again when refused before anything began because a node did not
   * answer within the node timeout (a loaded machine: a first connection
   * was seen to take over a second).
   */
  const switchoverRecorded = async (): Promise<{ operation: Promise<unknown> }> => {
    for (let attempt = 1; ; attempt += 1) {
      const since = Date.now();
      const operation = cluster.service.failover.switchover("node2").catch((error: Error) => error);
      let settled: unknown = null;
      void operation.then((outcome) => (settled = outcome));
      while ((await state()).primary !== "node2" && settled === null) {
        if (Date.now() - since > 30000) throw new Error("node2 was not recorded as the primary within 30 s");
        await sleep(2);
      }
      if (settled === null) return { operation };
      const refused =
        settled instanceof RelevoError && settled.code === ErrorCode.PreconditionFailed && /does not answer/.test(settled.message);
      if (!refused || attempt === 3)
        throw new Error(
          `the switchover ended before node2 was recorded as the primary: ${settled instanceof Error ? settled.message : JSON.stringify(settled)}`,
        );
    }
  };

  test("node2 killed once recorded as the primary: node1 is promoted on a timeline of its own, every write acknowledged before the switchover there, the loss in bytes — its first start failing (port taken), the failover is resumed, not stranded", async () => {
    const detectionWindowMs = cluster.config.failoverCheckIntervalMs * cluster.config.failoverFailureThreshold;
    await sql(node("node1"), "CREATE TABLE acked (id int PRIMARY KEY); INSERT INTO acked SELECT generate_series(1, 100)");
    await eventually(async () => ((await streamingFrom(node("node2"))) === node("node1").port ? true : undefined), {
      what: "node2 streaming from node1",
    });
    const { operation } = await switchoverRecorded();
    // Before the kill: the switchover's own run may see node2 gone, and say so, before kill() has returned.
    const killedAt = Date.now();
    await cluster.service.driver.kill(node("node2"));
    // The moment this test is about: node1 not yet started as node2's standby.
    expect((await cluster.service.driver.state(node("node1"))).phase).toBe("stopped");
    // node1's port taken until the failover's start of node1 has failed (connections refused at once, so no check waits on it).
    const squatter = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve, reject) => squatter.once("error", reject).listen(node("node1").port, node("node1").host, resolve));

    const outcome = await operation.finally(() => new Promise<void>((resolve) => squatter.close(() => resolve())));
    expect(outcome).toBeInstanceOf(RelevoError);
    expect((outcome as RelevoError).message).toMatch(/node1 did not start/);
    const detected = (await events("failover:detected", killedAt)).find((event) => (event.data as { kind?: string }).kind === "failover");
    expect(detected).toBeDefined();
    expect(Date.parse(detected!.occurredAt) - killedAt).toBeLessThanOrEqual(detectionWindowMs + DETECTION_ALLOWANCE_MS);
    // The choice was recorded before node1 was touched, and node1 is still marked as the switchover's old primary, fenced.
    expect(await cluster.service.failover.operation()).toMatchObject({ kind: "failover", from: "node2", to: "node1" });
    expect((await readFenceMarker(cluster.service.driver, node("node1")))?.reason).toMatch(/^prepared for takeover /);

    // Left in the journal past its point of no return: adopted once its lease lapses, and resumed to the end.
    const completed = await eventually(
      async () => (await events("failover:completed", killedAt)).find((event) => (event.data as { kind?: string }).kind === "failover"),
      { what: "the resumed failover completed", timeoutMs: 30000 },
    );
    expect(completed.data).toMatchObject({ from: "node2", to: "node1", status: "completed" });
    // Within the window, plus the failed start, the lapse of the lease, a check, and a start and a promotion on a loaded machine.
    const { leaseTtlMs, failoverCheckIntervalMs } = cluster.config;
    const bound = detectionWindowMs + DETECTION_ALLOWANCE_MS + leaseTtlMs + failoverCheckIntervalMs + 10000;
    expect(Date.parse(completed.occurredAt) - killedAt).toBeLessThanOrEqual(bound);
    const lostBytes = (completed.data as { lostBytes: number | null }).lostBytes;
    // What node2 wrote after node1's last record (its promotion's own records at least), within the lag limit.
    expect(lostBytes).toBeGreaterThan(0);
    expect(lostBytes).toBeLessThanOrEqual(cluster.config.failoverMaximumLagBytes);

    await sql(node("node1"), "INSERT INTO acked VALUES (101)");
    expect((await sql<{ n: number }>(node("node1"), "SELECT count(*)::int AS n FROM acked"))[0]!.n).toBe(101);
    const recorded = await state();
    expect(recorded).toMatchObject({ primary: "node1", fenced: ["node2"] });
    expect(await isFenced(cluster.service.driver, node("node1"))).toBe(false);
    // Timeline 3, not 2: node2's promotion made timeline 2, and two histories under one number would mix in the archive.
    const [walFile] = await sql<{ timeline: string }>(
      node("node1"),
      "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) AS timeline",
    );
    expect(parseInt(walFile!.timeline, 16)).toBe(3);
  });
});
