import { nodeServerKey, servedCertificate, testClientSsl } from "../helpers/tls";
import { startLibpqWriter } from "../helpers/libpq-writer";
import { failoverHelpers } from "../helpers/failover";
import { eventually, useTestCluster } from "../helpers/service";
import { createLogger } from "../../src/log";
import { startRelevo, type RelevoService } from "../../src/service";
import type { NodeRef } from "../../src/nodes/node-driver";
import { hbaNetworkFor } from "../../src/postgres/managed-settings";
import { Client } from "pg";
import { lastSeenPrimaryLsn } from "../../src/failover/primary-lsn";
import { bytesBehind, lsnToNumber } from "../../src/postgres/lsn";
import { CURRENT_TIMELINE_SQL } from "../../src/postgres/node-state";
import { readEndOfWal } from "../../src/postgres/wal-end";
import { ClusterStateStore, initialState } from "../../src/failover/cluster-state";
import { CommitWaitConfirmation, pollJoiningStandbys } from "../../src/failover/sync-join";
import { withNodeClient } from "../../src/postgres/connection";
import { superuserCredentials } from "../../src/cluster/bootstrap";
import { confirmReloadByCheckpoint } from "../../src/postgres/checkpoint-after-reload";
import { monotonicNowMs } from "../../src/util/monotonic-clock";
import { archiveKey, generationPrefix } from "../../src/repository/repository-layout";

describe("a frozen primary (SIGSTOP of its process group)", () => {
  const cluster = useTestCluster("failover-sigstop", { leaseTtlMs: 2000 });
  const { node, sql, state, events, streamingFrom, primaryNow } = failoverHelpers(cluster);
  const monitorCounts = () => ({
    threshold: cluster.config.failoverFailureThreshold,
    missedChecks: () => cluster.service.failover.monitor.missedChecks,
  });

  /**
   * `target` refuses `roles` over TCP from now on (pg_hba.conf, reloaded)
   * and their open sessions end, walsenders included: a reload alone affects
   * only new connections, and the monitor keeps its check connection open.
   * Returns the undoing.
   */
  const refuseRoles = async (target: NodeRef, roles: readonly string[]): Promise<() => Promise<void>> => {
    const { driver } = cluster.service;
    const hba = (await driver.readFile(target, "pg_hba.conf"))!.toString("utf8");
    const network = hbaNetworkFor(target.host);
    const reload = async () => {
      await driver.exec(target, ["pg_ctl", "reload", "-D", driver.dataDirectory(target)], { mode: "online" });
    };
    // Opened before the refusal: the session that ends the others.
    const admin = new Client({
      host: target.host,
      port: target.port,
      user: "postgres",
      password: cluster.service.secrets.superuserPassword,
      ssl: testClientSsl(),
    });
    await admin.connect();
    try {
      const rejects = roles.map((role) => `host all ${role} ${network} reject\nhost replication ${role} ${network} reject\n`).join("");
      await driver.writeFile(target, "pg_hba.conf", `${rejects}${hba}`);
      await reload();
      // A reload is a signal: in force once a new session is refused.
      await eventually(
        async () =>
          (await sql(target, "SELECT 1").then(
            () => false,
            (error: Error) => /pg_hba/.test(error.message),
          )) || undefined,
        {
          what: "the refusal in force",
        },
      );
      await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND usename = ANY($1)", [
        [...roles],
      ]);
    } finally {
      await admin.end();
    }
    return async () => {
      await driver.writeFile(target, "pg_hba.conf", hba);
      await reload();
    };
  };

  beforeAll(async () => {
    await sql(node("node1"), "CREATE TABLE acked (id int PRIMARY KEY, at timestamptz DEFAULT now())");
    await eventually(async () => ((await state()).eligible.includes("node2") ? true : undefined), { what: "node2 eligible" });
  });

  test("frozen for less than the detection window: no failover", async () => {
    const since = Date.now();
    await cluster.service.driver.pause(node("node1"));
    await new Promise((resolve) => setTimeout(resolve, 1500)); // window: 3 × 1000 ms
    await cluster.service.driver.resume(node("node1"));
    // Several more checks after it came back: still no decision taken.
    await new Promise((resolve) => setTimeout(resolve, 4000));
    expect((await state()).primary).toBe("node1");
    expect(await events("failover:detected", since)).toEqual([]);
    await sql(node("node1"), "INSERT INTO acked (id) VALUES (1)");
  });

  test("the primary refuses Relevo alone while its replica still streams from it: no failover", async () => {
    const since = Date.now();
    const { threshold, missedChecks } = monitorCounts();
    // Relevo's checks connect as postgres; the replica streams as replicator.
    const restore = await refuseRoles(node("node1"), ["postgres"]);
    try {
      // The checks really fail (their kept connection was ended, new ones are refused), past the threshold, twice.
      await eventually(() => (missedChecks() > threshold ? true : undefined), { what: "checks of node1 missed past the threshold" });
      expect(await streamingFrom(node("node2"))).toBe(node("node1").port);
      expect((await state()).primary).toBe("node1");
      expect(await events("failover:detected", since)).toEqual([]);
    } finally {
      await restore();
    }
    await eventually(() => (missedChecks() === 0 ? true : undefined), { what: "node1 answering Relevo's checks again" });
    expect(await events("failover:detected", since)).toEqual([]);
  });

  test("frozen for longer: node2 takes over; the old primary is killed, takes no write, then rejoins", async () => {
    const since = Date.now();
    await cluster.service.driver.pause(node("node1"));
    await eventually(
      async () => ((await state()).primary === "node2" && (await cluster.service.failover.operation()) === null ? true : undefined),
      {
        what: "node2 promoted",
        timeoutMs: 60000,
      },
    );
    // SIGCONT reaches nothing: the whole process group was killed while frozen.
    await cluster.service.driver.resume(node("node1"));
    const fenced = await events("node:fenced", since);
    expect(fenced.map((e) => e.node)).toContain("node1");
    expect((fenced[0]!.data as { method: string }).method).toBe("killed");
    const writer = startLibpqWriter(cluster.service);
    await eventually(() => (writer.acknowledgedSoFar() > 10 ? true : undefined), { what: "writes" });
    const report = await writer.stop();
    // Every acknowledged write is on node2; none could land on node1.
    const present = new Set((await sql<{ id: number }>(node("node2"), "SELECT id FROM acked")).map((r) => r.id));
    expect(report.acknowledged.filter((id) => !present.has(id))).toEqual([]);
    expect(present.has(1)).toBe(true);
    // Rejoined automatically as node2's replica.
    await eventually(
      async () =>
        (await streamingFrom(node("node1")).catch(() => null)) === node("node2").port &&
        (await cluster.service.failover.operation()) === null &&
        !(await state()).fenced.includes("node1")
          ? true
          : undefined,
      { what: "node1 rejoined, following node2", timeoutMs: 90000 },
    );
  });

  test("a replica killed with -9 rejoins as it is (it holds a prefix of the primary's history)", async () => {
    await cluster.service.driver.kill(node("node1"));
    expect(await cluster.service.failover.rejoin("node1")).toBe("restart");
    await sql(node("node2"), "INSERT INTO acked (id) VALUES (2000000)");
    await eventually(async () => ((await sql(node("node1"), "SELECT 1 FROM acked WHERE id = 2000000")).length === 1 ? true : undefined), {
      what: "replicated",
    });
  });

  test("the primary refuses Relevo and its replica alike: the replica is promoted", async () => {
    // node2 is the primary now, node1 its replica.
    await eventually(async () => ((await state()).eligible.includes("node1") ? true : undefined), { what: "node1 eligible" });
    const since = Date.now();
    const restore = await refuseRoles(node("node2"), ["postgres", "replicator"]);
    try {
      await eventually(async () => ((await primaryNow()) === "node1" ? true : undefined), { what: "node1 promoted", timeoutMs: 60000 });
    } finally {
      await restore().catch(() => undefined); // node2 is fenced (stopped) by now
    }
    const detected = await events("failover:detected", since);
    expect(detected.map((e) => e.node)).toEqual(["node2"]);
    expect(detected[0]!.message).toMatch(/no replica streams from it/);
  });
});

describe("fencing holds, and a stale replica is never promoted (synchronous, no automatic rejoin)", () => {
  const cluster = useTestCluster("failover-fencing", { leaseTtlMs: 2000, autoRejoin: "false" });
  const { node, sql, state, events, primaryNow } = failoverHelpers(cluster);

  beforeAll(async () => {
    await sql(node("node1"), "CREATE TABLE acked (id int PRIMARY KEY, at timestamptz DEFAULT now())");
    await eventually(async () => ((await state()).eligible.includes("node2") ? true : undefined), { what: "node2 eligible" });
  });

  /** Facts of node1's checkpoints: the last one's start (seconds), how many were requested, the last reload. */
  const checkpointFacts = async () =>
    (
      await sql<{ startedAt: Date; requested: string; reloadedAt: Date }>(
        node("node1"),
        `SELECT (pg_control_checkpoint()).checkpoint_time AS "startedAt", checkpoints_req::text AS requested,
                pg_conf_load_time() AS "reloadedAt" FROM pg_stat_bgwriter`,
      )
    )[0]!;

  test("join points wait for the confirmation that commits wait: none while it is pending, one once it is done", async () => {
    const primary = node("node1");
    const wanted = (await sql<{ names: string }>(primary, "SELECT current_setting('synchronous_standby_names') AS names"))[0]!.names;
    expect(wanted).toContain("node2");
    // A state of its own (the service's monitor keeps its own): node2 in the set, not yet eligible.
    const key = "relevo-test:join-probe:state";
    const store = new ClusterStateStore(cluster.service.redis, key);
    const guard = { key, value: "" };
    await store.update(guard, () => ({ ...initialState("node1"), syncSet: ["node2"] }));
    let confirm = (): void => undefined;
    const confirming = new Promise<void>((resolve) => (confirm = resolve));
    const commitWait = new CommitWaitConfirmation(
      async (target, { mayCheckpoint, checkpointIssued }) => {
        await confirming;
        return withNodeClient(target, superuserCredentials(cluster.service), 30000, (client) =>
          confirmReloadByCheckpoint(client, { mayCheckpoint, checkpointIssued }),
        );
      },
      { checkpointIntervalMs: 0 },
    );
    const polling = (forMs: number) => ({
      primary,
      credentials: superuserCredentials(cluster.service),
      timeoutMs: 5000,
      wanted,
      counts: (name: string) => name === "node2",
      until: monotonicNowMs() + forMs,
      store,
      guard,
      conditions: {},
      commitWait,
    });
    try {
      // node2 streams and the primary reports it synchronous, but nothing confirmed its commits wait: no join point.
      const pending = await pollJoiningStandbys((await store.read())!, polling(500));
      expect(pending).toMatchObject({ joining: {}, eligible: [] });
      confirm();
      await eventually(() => (commitWait.confirmed("node1") ? true : undefined), { what: "the confirmation" });
      const joined = await pollJoiningStandbys((await store.read())!, polling(5000));
      // A join point taken, then reached: eligible (its join point dropped once reached).
      expect(joined).toMatchObject({ eligible: ["node2"], joining: {} });
    } finally {
      confirm(); // a confirmation still held back would keep settled() waiting
      await commitWait.settled(1000);
      await cluster.service.redis.del(key);
    }
  });

  test("a standby that left the set (it emptied) and returns is eligible again only after a checkpoint that followed the new setting", async () => {
    await cluster.service.driver.stop(node("node2"), { mode: "fast", timeoutMs: 30000 });
    await eventually(async () => ((await state()).syncSet.length === 0 ? true : undefined), { what: "the set emptied" });
    await eventually(
      async () =>
        (await sql<{ names: string }>(node("node1"), "SELECT current_setting('synchronous_standby_names') AS names"))[0]!.names === ""
          ? true
          : undefined,
      { what: "node1 waits for nobody" },
    );
    const before = await checkpointFacts();
    await cluster.service.driver.start(node("node2"), { timeoutMs: 30000 });
    await eventually(async () => ((await state()).eligible.includes("node2") ? true : undefined), { what: "node2 eligible again" });
    const after = await checkpointFacts();
    // The monitor confirmed anew (the empty set un-confirmed node1): a checkpoint began once the set was back in node1's setting.
    expect(Number(after.requested)).toBeGreaterThan(Number(before.requested));
    expect(Math.floor(after.startedAt.getTime() / 1000)).toBeGreaterThanOrEqual(Math.floor(after.reloadedAt.getTime() / 1000));
    expect(after.reloadedAt.getTime()).toBeGreaterThan(before.reloadedAt.getTime());
  });

  test("the confirming checkpoint: one found since the reload is enough; none, a CHECKPOINT only when allowed; given up, the server ends its session", async () => {
    const primary = node("node1");
    // Each CHECKPOINT the confirmation reports sent (the monitor's rate limit counts from there).
    let issued = 0;
    const checkpointIssued = (): void => void (issued += 1);
    const confirmOnce = (mayCheckpoint: boolean) =>
      withNodeClient(primary, superuserCredentials(cluster.service), 30000, (client) =>
        confirmReloadByCheckpoint(client, { mayCheckpoint, checkpointIssued }),
      );
    // A checkpoint that began two whole seconds after the last reload confirms it: no CHECKPOINT of its own.
    await eventually(
      async () =>
        Math.floor(Date.now() / 1000) >= Math.floor((await checkpointFacts()).reloadedAt.getTime() / 1000) + 2 ? true : undefined,
      { what: "two seconds past the reload" },
    );
    await sql(primary, "CHECKPOINT");
    const checkpointed = await checkpointFacts();
    expect(await confirmOnce(true)).toBe("found-checkpoint");
    // A reload since: the last checkpoint does not show it was processed; a CHECKPOINT does, when one may run.
    await sql(primary, "SELECT pg_reload_conf()");
    expect(await confirmOnce(false)).toBe("unconfirmed");
    expect((await checkpointFacts()).requested).toBe(checkpointed.requested);
    expect(issued).toBe(0);
    expect(await confirmOnce(true)).toBe("checkpointed");
    expect(Number((await checkpointFacts()).requested)).toBe(Number(checkpointed.requested) + 1);
    expect(issued).toBe(1);
    // The checkpointer frozen, a CHECKPOINT waits; its caller gives up (the monitor stopping) and ends the connection.
    await sql(primary, "SELECT pg_reload_conf()");
    const checkpointer = (await sql<{ pid: number }>(primary, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"))[0]!
      .pid;
    const waiting = () =>
      sql<{ pid: number }>(
        primary,
        "SELECT pid FROM pg_stat_activity WHERE query = 'CHECKPOINT' AND state = 'active' AND pid <> pg_backend_pid()",
      );
    process.kill(checkpointer, "SIGSTOP");
    try {
      const abandoned = withNodeClient(primary, superuserCredentials(cluster.service), 30000, async (client) => {
        const confirming = confirmReloadByCheckpoint(client, { mayCheckpoint: true, checkpointIssued });
        await eventually(async () => ((await waiting()).length === 1 ? true : undefined), { what: "the CHECKPOINT waiting" });
        // Reported sent before it returned: a CHECKPOINT given up on still counts.
        expect(issued).toBe(2);
        client.connection.stream.destroy();
        return confirming;
      });
      await expect(abandoned).rejects.toThrow();
      // The server notices the closed connection within client_connection_check_interval and ends the session.
      await eventually(async () => ((await waiting()).length === 0 ? true : undefined), { what: "the session ended", timeoutMs: 5000 });
    } finally {
      process.kill(checkpointer, "SIGCONT");
    }
  });

  test("the old primary restarted by hand after a failover accepts no write and is fenced again", async () => {
    await cluster.service.driver.kill(node("node1"));
    await eventually(async () => ((await primaryNow()) === "node2" ? true : undefined), { what: "node2 promoted", timeoutMs: 60000 });
    expect((await state()).fenced).toContain("node1");
    const since = Date.now();
    // What an operator's `pg_ctl start` does.
    await cluster.service.driver.start(node("node1"), { timeoutMs: 30000 });
    await expect(sql(node("node1"), "INSERT INTO acked (id) VALUES (42)")).rejects.toThrow(/read-only transaction/);
    // A libpq writer asking for read-write never lands on it.
    const writer = startLibpqWriter({ ...cluster.service, nodes: [node("node1"), node("node2")] });
    await eventually(() => (writer.acknowledgedSoFar() > 5 ? true : undefined), { what: "writes" });
    const report = await writer.stop();
    const onNew = new Set((await sql<{ id: number }>(node("node2"), "SELECT id FROM acked")).map((r) => r.id));
    expect(report.acknowledged.every((id) => onNew.has(id))).toBe(true);
    // Seen as a second primary and fenced (stopped) at once.
    await eventually(async () => ((await cluster.service.driver.state(node("node1"))).phase === "stopped" ? true : undefined), {
      what: "node1 fenced again",
    });
    expect((await events("cluster:split-brain", since)).map((e) => e.node)).toContain("node1");
    expect(await cluster.service.failover.rejoin("node1")).toBe("rewind");
    expect((await state()).fenced).toEqual([]);
  });

  test("the replica dies: writes resume within the detection window; the primary dying next does not promote the stale replica", async () => {
    // node2 is the primary, node1 its (eligible) replica.
    await eventually(async () => ((await state()).eligible.includes("node1") ? true : undefined), { what: "node1 eligible" });
    await cluster.service.driver.kill(node("node1"));
    const started = Date.now();
    // This commit waits for node1 until it leaves the synchronous set: within
    // the detection window, plus the monitor's round that takes it out. (A
    // wait cut short by statement_timeout still commits, and fails the bound.)
    const { failoverCheckIntervalMs, failoverFailureThreshold } = cluster.config;
    const bound = failoverCheckIntervalMs * failoverFailureThreshold + failoverCheckIntervalMs;
    await sql(node("node2"), `SET statement_timeout = ${2 * bound}; INSERT INTO acked (id) VALUES (3000000)`);
    const waited = Date.now() - started;
    console.log(`a commit waited ${waited} ms for the dead synchronous replica`);
    expect(waited).toBeLessThanOrEqual(bound);
    expect((await state()).eligible).not.toContain("node1");
    const since = Date.now();
    await cluster.service.driver.kill(node("node2"));
    await cluster.service.driver.start(node("node1"), { timeoutMs: 30000 }); // reachable, but stale
    await eventually(async () => ((await events("failover:failed", since)).length > 0 ? true : undefined), {
      what: "the refused failover",
      timeoutMs: 30000,
    });
    const failed = (await events("failover:failed", since))[0]!;
    expect(failed.message).toMatch(/no eligible replica/);
    expect((await state()).primary).toBe("node2");
    expect((await sql<{ r: boolean }>(node("node1"), "SELECT pg_is_in_recovery() AS r"))[0]!.r).toBe(true);
    // An operator's choice of the stale replica is refused alike, before anything is fenced.
    await expect(cluster.service.failover.failover({ to: "node1" })).rejects.toMatchObject({ code: "NO_ELIGIBLE_REPLICA" });
    expect((await state()).fenced).not.toContain("node2");
    // The old primary was not fenced (there was nobody to promote): it comes back as it was.
    await cluster.service.driver.start(node("node2"), { timeoutMs: 30000 });
    expect((await sql(node("node2"), "SELECT 1 FROM acked WHERE id = 3000000")).length).toBe(1);
  });

  test("failover --to a stale replica with force: promoted, and what it lacks reported in bytes", async () => {
    // No automatic failover under the operator's feet.
    await cluster.service.failover.setMaintenance(true);
    await cluster.service.driver.stop(node("node1"), { mode: "fast", timeoutMs: 30000 });
    await sql(node("node2"), "INSERT INTO acked (id) VALUES (3000001)");
    const written = (await sql<{ lsn: string }>(node("node2"), "SELECT pg_current_wal_lsn()::text AS lsn"))[0]!.lsn;
    // A whole segment of node2's timeline past all node1 has, pushed to the repository's archive: off node1's history
    // once node1 is promoted, it must leave archive/ for diverged/ (review 21, L4: the set-aside of pushed WAL).
    const { repository } = cluster.service;
    const pastSwitch = (await sql<{ file: string }>(node("node2"), "SELECT pg_walfile_name(pg_current_wal_lsn()) AS file"))[0]!.file;
    await sql(node("node2"), "SELECT pg_switch_wal()");
    await eventually(async () => ((await repository.objects.exists(archiveKey(repository.generation, pastSwitch))) ? true : undefined), {
      what: `${pastSwitch} pushed`,
    });
    // The monitor has seen it (the loss bound of a failover).
    await eventually(
      async () => {
        const seen = await lastSeenPrimaryLsn(cluster.service.redis, cluster.service.keys.primaryLsn);
        return seen?.node === "node2" && lsnToNumber(seen.lsn) >= lsnToNumber(written) ? true : undefined;
      },
      { what: "node2's LSN seen by the monitor" },
    );
    await cluster.service.driver.kill(node("node2"));
    await cluster.service.driver.start(node("node1"), { timeoutMs: 30000 }); // a standby with nobody to stream from
    const stale = (await sql<{ lsn: string }>(node("node1"), "SELECT pg_last_wal_replay_lsn()::text AS lsn"))[0]!.lsn;
    await expect(cluster.service.failover.failover({ to: "node1" })).rejects.toMatchObject({ code: "NO_ELIGIBLE_REPLICA" });
    const record = await cluster.service.failover.failover({ to: "node1", force: true });
    expect(record).toMatchObject({ kind: "failover", trigger: "manual", from: "node2", to: "node1", status: "completed" });
    // At least what node2 had written when the monitor last saw it, which node1 never received.
    expect(record.lostBytes).toBeGreaterThanOrEqual(bytesBehind(written, stale));
    expect(bytesBehind(written, stale)).toBeGreaterThan(0);
    expect(await sql(node("node1"), "SELECT 1 FROM acked WHERE id = 3000001")).toEqual([]);
    expect((await state()).primary).toBe("node1");
    await eventually(async () => ((await repository.objects.exists(archiveKey(repository.generation, pastSwitch))) ? undefined : true), {
      what: `${pastSwitch} set aside from archive/`,
    });
    const kept = (await repository.objects.list(`${generationPrefix(repository.generation)}diverged/`)).filter((info) =>
      info.key.endsWith(`/${pastSwitch}`),
    );
    expect(kept).toHaveLength(1);
    expect(await repository.archive.has(pastSwitch)).toBe(false);
    await cluster.service.failover.setMaintenance(false);
  });
});

describe("rejoin when pg_rewind cannot run", () => {
  const cluster = useTestCluster("failover-reseed", { leaseTtlMs: 2000, autoRejoin: "false" });
  const { node, sql, state, primaryNow, streamingFrom } = failoverHelpers(cluster);

  test("the old primary is seeded again", async () => {
    await sql(node("node1"), "CREATE TABLE acked (id int PRIMARY KEY, at timestamptz DEFAULT now())");
    await eventually(async () => ((await state()).eligible.includes("node2") ? true : undefined), { what: "node2 eligible" });
    const password = cluster.service.secrets.superuserPassword;
    const before = await servedCertificate(node("node1"), password);
    await cluster.service.driver.kill(node("node1"));
    await eventually(async () => ((await primaryNow()) === "node2" ? true : undefined), { what: "node2 promoted", timeoutMs: 60000 });
    // pg_rewind connects as rewinder: with a password it does not know, it cannot run.
    await sql(node("node2"), "ALTER ROLE rewinder PASSWORD 'not-the-one-relevo-has'");
    try {
      expect(await cluster.service.failover.rejoin("node1")).toBe("reseed");
    } finally {
      await sql(node("node2"), `ALTER ROLE rewinder PASSWORD '${cluster.service.secrets.rewindPassword}'`);
    }
    expect(await streamingFrom(node("node1"))).toBe(node("node2").port);
    await sql(node("node2"), "INSERT INTO acked (id) VALUES (7)");
    await eventually(async () => ((await sql(node("node1"), "SELECT 1 FROM acked WHERE id = 7")).length === 1 ? true : undefined), {
      what: "replicated",
    });
    const rejoined = (await cluster.service.events.page({ first: 100, kinds: ["node:rejoined"] })).events[0]!;
    expect(rejoined.data).toMatchObject({ method: "reseed", upstream: "node2" });
    // Seeded again by pg_basebackup from node2, node1 serves a new certificate of its own, with a key of its own.
    const after = await servedCertificate(node("node1"), password);
    expect(after.subject.CN).toBe("node1");
    expect(after.serialNumber).not.toBe(before.serialNumber);
    expect(after.serialNumber).not.toBe((await servedCertificate(node("node2"), password)).serialNumber);
    const keyOf = (name: string) => nodeServerKey(cluster.service.driver, cluster.config.clusterName, node(name));
    expect(await keyOf("node1")).not.toBe(await keyOf("node2"));
  });
});

describe("a restart of the service after a failover", () => {
  const cluster = useTestCluster("failover-restart", { leaseTtlMs: 2000, autoRejoin: "false" });
  const { node, sql, state, primaryNow } = failoverHelpers(cluster);
  let restarted: RelevoService | null = null;
  afterAll(async () => {
    await restarted?.stop({ reason: "test finished" });
  });

  test("keeps the fenced old primary down and the new primary recorded", async () => {
    await eventually(async () => ((await state()).eligible.includes("node2") ? true : undefined), { what: "node2 eligible" });
    await cluster.service.driver.kill(node("node1"));
    await eventually(async () => ((await primaryNow()) === "node2" ? true : undefined), { what: "node2 promoted", timeoutMs: 60000 });
    await cluster.service.stop();
    restarted = await startRelevo(cluster.config, createLogger({ level: cluster.config.logLevel }));
    // The recorded primary starts first.
    expect(restarted.outcomes.map((outcome) => `${outcome.node.name}:${outcome.phase}`)).toEqual(["node2:started", "node1:fenced"]);
    expect((await restarted.driver.state(node("node1"))).phase).toBe("stopped");
    expect((await restarted.failover.state())!.primary).toBe("node2");
    await sql(node("node2"), "CREATE TABLE after_restart (id int)");
    // Some checks later, nothing has moved.
    await new Promise((resolve) => setTimeout(resolve, 3000));
    expect((await restarted.failover.state())!.primary).toBe("node2");
    expect(await restarted.failover.rejoin("node1")).toBe("rewind");
  });
});

/** Where the node left its previous timeline: the last line of its current timeline's history file. */
const SWITCH_POINT_SQL = `
SELECT (regexp_match(pg_read_file('pg_wal/' || lpad(upper(to_hex(${CURRENT_TIMELINE_SQL})), 8, '0') || '.history'),
                     '([0-9A-F]+/[0-9A-F]+)\\s+[^\\n]*\\n?$'))[1] AS lsn`;

describe("asynchronous mode", () => {
  const cluster = useTestCluster("failover-async", {
    leaseTtlMs: 2000,
    autoRejoin: "false",
    synchronous: "false",
    autoFailback: "true",
    autoFailbackAfterMs: 2000,
  });
  const { node, sql, state, primaryNow, streamingFrom } = failoverHelpers(cluster);

  test("kill -9: promoted within the lag bound; the loss is reported", async () => {
    await sql(node("node1"), "CREATE TABLE acked (id int PRIMARY KEY, at timestamptz DEFAULT now())");
    expect((await sql<{ s: string }>(node("node1"), "SELECT current_setting('synchronous_standby_names') AS s"))[0]!.s).toBe("");
    const writer = startLibpqWriter(cluster.service);
    await eventually(() => (writer.acknowledgedSoFar() > 30 ? true : undefined), { what: "writes flowing" });
    // node2 stops receiving: what node1 acknowledges from now on is certainly lost.
    await sql(node("node2"), "ALTER SYSTEM SET primary_conninfo = ''");
    await sql(node("node2"), "SELECT pg_reload_conf()");
    await eventually(async () => ((await streamingFrom(node("node2"))) === null ? true : undefined), { what: "node2 not streaming" });
    const [received] = (await sql<{ lsn: string }>(node("node2"), "SELECT pg_last_wal_receive_lsn()::text AS lsn")).map((row) => row.lsn);
    // The last write must be one the monitor cannot have seen, or a loss measured only to the last LSN it saw would
    // pass: the postmaster is frozen (no new connection is accepted), every other open session ended (the monitor's
    // check connection too), and only then is the row written, on a session opened before, and node1 killed.
    const last = new Client({
      host: node("node1").host,
      port: node("node1").port,
      ...superuserCredentials(cluster.service),
      ssl: testClientSsl(),
    });
    await last.connect();
    let flushed: string;
    try {
      const pidFile = (await last.query<{ text: string }>("SELECT pg_read_file('postmaster.pid') AS text")).rows[0]!.text;
      process.kill(Number(pidFile.split("\n")[0]), "SIGSTOP");
      await last.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
      );
      await eventually(
        async () => {
          const others = await last.query(
            "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
          );
          return others.rowCount === 0 ? true : undefined;
        },
        { what: "every other session on node1 ended" },
      );
      const seenBefore = await lastSeenPrimaryLsn(cluster.service.redis, cluster.service.keys.primaryLsn);
      flushed = (await last.query<{ lsn: string }>("INSERT INTO acked (id) VALUES (-1) RETURNING pg_current_wal_flush_lsn()::text AS lsn"))
        .rows[0]!.lsn;
      // The precondition that makes the loss assertion below decisive: the monitor's last LSN is short of this write.
      expect(seenBefore?.node).toBe("node1");
      expect(lsnToNumber(seenBefore!.lsn)).toBeLessThan(lsnToNumber(flushed));
    } finally {
      last.on("error", () => undefined);
      await cluster.service.driver.kill(node("node1"));
      await last.end().catch(() => undefined);
    }
    await eventually(async () => ((await primaryNow()) === "node2" ? true : undefined), { what: "node2 promoted", timeoutMs: 60000 });
    const after = writer.acknowledgedSoFar();
    await eventually(() => (writer.acknowledgedSoFar() > after + 10 ? true : undefined), { what: "writes on node2" });
    const report = await writer.stop();
    const [record] = await cluster.service.failover.failovers(1);
    expect(record).toMatchObject({ kind: "failover", trigger: "automatic", from: "node1", to: "node2", status: "completed" });
    const present = new Set((await sql<{ id: number }>(node("node2"), "SELECT id FROM acked")).map((r) => r.id));
    const lost = [-1, ...report.acknowledged].filter((id) => !present.has(id));
    console.log(`asynchronous failover: ${lost.length} acknowledged rows lost, ${record!.lostBytes} bytes reported`);
    expect(lost).toContain(-1);
    // Lost rows are lost bytes: at most what the dead primary's WAL holds past where node2 left its timeline.
    const walEnd = await readEndOfWal(cluster.service.driver, node("node1"), { timeoutMs: 30000 });
    const [switchPoint] = (await sql<{ lsn: string }>(node("node2"), SWITCH_POINT_SQL)).map((row) => row.lsn);
    // At least up to the row node1 flushed last, which the monitor never saw.
    expect(record!.lostBytes).toBeGreaterThanOrEqual(bytesBehind(flushed, received!));
    expect(record!.lostBytes).toBeGreaterThan(0);
    expect(record!.lostBytes).toBeLessThanOrEqual(bytesBehind(walEnd!, switchPoint!));
    expect(record!.lostBytes!).toBeLessThanOrEqual(cluster.config.failoverMaximumLagBytes);
    // The catalog has the record once the new primary consolidated it.
    await eventually(
      async () => {
        const prisma = await cluster.service.database.client();
        return (await prisma.failover.findUnique({ where: { id: record!.id } }))?.status === "completed" ? true : undefined;
      },
      { what: "the Failover row" },
    );
    expect((await state()).fenced).toContain("node1");
    // Read before its WAL was rewound: automatic rejoin is off in this cluster.
    expect(await cluster.service.failover.rejoin("node1")).toBe("rewind");
  });

  test("automatic failback: node1 rejoins, stays in sync for RELEVO_AUTO_FAILBACK_AFTER_MS, and gets the primary role back", async () => {
    await eventually(async () => ((await primaryNow()) === "node1" && (await state()).fenced.length === 0 ? true : undefined), {
      what: "the automatic failback",
      timeoutMs: 90000,
    });
    const [record] = await cluster.service.failover.failovers(1);
    expect(record).toMatchObject({ kind: "failback", trigger: "automatic", from: "node2", to: "node1", status: "completed", lostBytes: 0 });
    await eventually(async () => ((await streamingFrom(node("node2")).catch(() => null)) === node("node1").port ? true : undefined), {
      what: "node2 following node1",
    });
  });

  test("maintenance mode: a dead primary is left alone (the topology still follows it) until maintenance ends", async () => {
    await cluster.service.failover.setMaintenance(true);
    await cluster.service.driver.kill(node("node1"));
    await new Promise((resolve) => setTimeout(resolve, 5000)); // more than the detection window
    expect((await state()).primary).toBe("node1");
    const snapshot = await cluster.service.collector.pollNow();
    expect(snapshot.nodes.find((n) => n.name === "node1")?.reachable).toBe(false);
    await cluster.service.failover.setMaintenance(false);
    await eventually(async () => ((await primaryNow()) === "node2" ? true : undefined), {
      what: "failover after maintenance",
      timeoutMs: 60000,
    });
  });
});
