import { startLibpqWriter } from "../helpers/libpq-writer";
import { eventually, useTestCluster } from "../helpers/service";
import { failoverHelpers } from "../helpers/failover";
import { describeOnEachDriver } from "../helpers/drivers";
import { graphqlRequest } from "../helpers/graphql-client";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import type { NodeRef } from "../../src/nodes/node-driver";
import { CURRENT_TIMELINE_SQL } from "../../src/postgres/node-state";

const execFileAsync = promisify(execFile);

/**
 * Runbooks on three real nodes in synchronous mode (the default): a writer
 * inserts through a multi-host libpq string throughout and logs every
 * acknowledged id; none may be missing afterwards.
 */
describeOnEachDriver("failover, rejoin and failback (synchronous, three nodes)", (_driver, overrides) => {
  const cluster = useTestCluster("failover", { replicaCount: 2, leaseTtlMs: 2000, ...overrides });
  const { node, sql, state, streamingFrom: receiverPort } = failoverHelpers(cluster);
  const kinds = async (since: number) => {
    const page = await cluster.service.events.page({ first: 500 });
    return page.events
      .filter((e) => Date.parse(e.occurredAt) >= since)
      .map((e) => ({ ...e, data: e.data as unknown as Record<string, unknown> }));
  };

  /**
   * The timeline of the WAL a primary writes now (pg_control_checkpoint()
   * keeps the old one until the first checkpoint after a fast promotion).
   */
  const timelineOf = async (target: NodeRef): Promise<number> =>
    (await sql<{ tl: number }>(target, `SELECT ${CURRENT_TIMELINE_SQL} AS tl`))[0]!.tl;

  beforeAll(async () => {
    await sql(node("node1"), "CREATE TABLE acked (id int PRIMARY KEY, at timestamptz DEFAULT now())");
    // Every commit waits for both replicas once they are in the synchronous set and caught up.
    await eventually(async () => ((await state()).eligible.length === 2 ? true : undefined), {
      what: "both replicas eligible",
      timeoutMs: 30000,
    });
  });

  test("kill -9 of the primary (its process group, or its container): a replica is promoted, no acknowledged row is lost, the other follows it", async () => {
    const timelineBefore = await timelineOf(node("node1"));
    const writer = startLibpqWriter(cluster.service);
    await eventually(() => (writer.acknowledgedSoFar() > 50 ? true : undefined), { what: "writes flowing" });
    const killedAt = Date.now();
    await cluster.service.driver.kill(node("node1"));
    const after = await eventually(
      async () => {
        const current = await state();
        return current.primary !== "node1" && (await cluster.service.failover.operation()) === null ? current : undefined;
      },
      { what: "a new primary", timeoutMs: 60000 },
    );
    const promoted = node(after.primary);
    const acknowledgedAtKill = writer.acknowledgedSoFar();
    await eventually(() => (writer.acknowledgedSoFar() > acknowledgedAtKill + 20 ? true : undefined), {
      what: "writes on the new primary",
    });
    const report = await writer.stop();
    const firstWriteAfterKill = report.ackTimes[report.ackStarts.findIndex((time) => time > killedAt)]!;

    const present = new Set((await sql<{ id: number }>(promoted, "SELECT id FROM acked")).map((row) => row.id));
    const lost = report.acknowledged.filter((id) => !present.has(id));
    expect(lost).toEqual([]);
    expect(after.fenced).toContain("node1");
    // A promotion starts a new timeline: the same one would be a second primary of the old history.
    expect(await timelineOf(promoted)).toBeGreaterThan(timelineBefore);

    const other = cluster.service.nodes.find((n) => n.name !== "node1" && n.name !== promoted.name)!;
    await eventually(async () => ((await receiverPort(other)) === promoted.port ? true : undefined), {
      what: `${other.name} streaming from ${promoted.name}`,
    });
    const events = await kinds(killedAt);
    for (const stage of ["failover:detected", "failover:fenced", "failover:promoting", "failover:promoted", "failover:completed"]) {
      expect(events.map((e) => e.kind)).toContain(stage);
    }
    const completed = events.find((e) => e.kind === "failover:completed")!;
    expect(completed.data).toMatchObject({ kind: "failover", trigger: "automatic", from: "node1", to: promoted.name, status: "completed" });
    console.log(
      `kill -9 → first write ${firstWriteAfterKill - killedAt} ms; acknowledged ${report.acknowledged.length}, lost ${lost.length}`,
    );
  });

  test("clients follow the new primary: the API's writer string, the health endpoints, the failovers query", async () => {
    const primary = node((await state()).primary);
    const token = cluster.token("viewer");
    const { data } = await graphqlRequest<{
      cluster: { primaryEndpoint: { port: number }; writerConnectionString: string; readerConnectionString: string };
    }>(cluster.url, "{ cluster { primaryEndpoint { port } writerConnectionString readerConnectionString } }", { token });
    expect(data!.cluster.primaryEndpoint.port).toBe(primary.port);
    expect(data!.cluster.writerConnectionString).toContain("target_session_attrs=read-write");
    expect(data!.cluster.writerConnectionString).not.toContain(cluster.service.secrets.superuserPassword);
    // libpq with the writer string lands on the new primary, whichever it is.
    const port = await execFileAsync(
      "/usr/lib/postgresql/15/bin/psql",
      [data!.cluster.writerConnectionString, "-XAtc", "SELECT current_setting('port')"],
      {
        env: { ...process.env, PGUSER: "postgres", PGPASSWORD: cluster.service.secrets.superuserPassword },
      },
    );
    expect(port.stdout.trim()).toBe(String(primary.port));
    const base = cluster.url.replace(/\/graphql$/, "");
    expect((await fetch(`${base}/nodes/${primary.name}/primary`)).status).toBe(200);
    expect((await fetch(`${base}/nodes/node1/primary`)).status).toBe(503);
    expect((await fetch(`${base}/nodes/${primary.name}/replica?maxLagBytes=nonsense`)).status).toBe(400);
    const failovers = await graphqlRequest<{
      failovers: Array<{ kind: string; trigger: string; from: string; to: string; status: string; lostBytes: number | null }>;
    }>(cluster.url, "{ failovers(limit: 5) { kind trigger from to status lostBytes } }", { token });
    expect(failovers.data!.failovers[0]).toMatchObject({
      kind: "FAILOVER",
      trigger: "AUTOMATIC",
      from: "node1",
      to: primary.name,
      status: "COMPLETED",
    });
  });

  test("the fenced old primary rejoins by itself (pg_rewind) and streams from the new primary", async () => {
    const primary = node((await state()).primary);
    await eventually(
      async () => {
        const current = await state();
        const settled = !current.fenced.includes("node1") && (await cluster.service.failover.operation()) === null;
        return settled && (await receiverPort(node("node1")).catch(() => null)) === primary.port ? true : undefined;
      },
      { what: "node1 rejoined", timeoutMs: 90000 },
    );
    const rejoined = (await kinds(0)).find((e) => e.kind === "node:rejoined" && e.node === "node1");
    expect(rejoined?.data).toMatchObject({ method: "rewind", upstream: primary.name });
    // It has everything written on the new primary since.
    await sql(primary, "INSERT INTO acked (id) VALUES (1000000)");
    await eventually(async () => ((await sql(node("node1"), "SELECT 1 FROM acked WHERE id = 1000000")).length === 1 ? true : undefined), {
      what: "replication to node1",
    });
  });

  test("failback under write load: node1 is the primary again, no acknowledged row lost", async () => {
    await eventually(async () => ((await state()).eligible.includes("node1") ? true : undefined), {
      what: "node1 in sync",
      timeoutMs: 30000,
    });
    const start = Date.now();
    await sql(node((await state()).primary), "TRUNCATE acked");
    const writer = startLibpqWriter(cluster.service);
    await eventually(() => (writer.acknowledgedSoFar() > 30 ? true : undefined), { what: "writes flowing" });
    const record = await cluster.service.failover.failback();
    expect(record).toMatchObject({ kind: "failback", to: "node1", status: "completed", lostBytes: 0 });
    const acknowledgedAtFailback = writer.acknowledgedSoFar();
    await eventually(() => (writer.acknowledgedSoFar() > acknowledgedAtFailback + 20 ? true : undefined), {
      what: "writes after failback",
    });
    const report = await writer.stop();
    expect((await state()).primary).toBe("node1");
    const present = new Set((await sql<{ id: number }>(node("node1"), "SELECT id FROM acked")).map((row) => row.id));
    expect(report.acknowledged.filter((id) => !present.has(id))).toEqual([]);
    // Both others follow node1.
    for (const name of ["node2", "node3"]) {
      await eventually(async () => ((await receiverPort(node(name))) === node("node1").port ? true : undefined), {
        what: `${name} following node1`,
      });
    }
    console.log(`failback took ${record.durationMs} ms; longest write gap ${report.longestGapMs} ms (${Date.now() - start} ms in all)`);
  });

  test("a replica added and removed: seeded, streaming, in the topology; then gone with its slot", async () => {
    const primary = node((await state()).primary);
    const added = await cluster.service.failover.addReplica("node4");
    expect(added.name).toBe("node4");
    expect(await receiverPort(added)).toBe(primary.port);
    const snapshot = await cluster.service.collector.pollNow();
    expect(snapshot.nodes.map((n) => n.name)).toContain("node4");
    // It joins the synchronous set like the others.
    await eventually(async () => ((await state()).eligible.includes("node4") ? true : undefined), {
      what: "node4 eligible",
      timeoutMs: 30000,
    });
    await expect(cluster.service.failover.addReplica("node4")).rejects.toMatchObject({ code: "BAD_USER_INPUT" });

    await cluster.service.failover.removeReplica("node4");
    expect((await cluster.service.driver.state(added)).phase).toBe("absent");
    expect(await sql(primary, "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'relevo_node4'")).toEqual([]);
    expect((await state()).syncSet).not.toContain("node4");
    expect((await cluster.service.collector.pollNow()).nodes.map((n) => n.name)).not.toContain("node4");
    await expect(cluster.service.failover.removeReplica(primary.name)).rejects.toMatchObject({ code: "PRECONDITION_FAILED" });
    // Writes go on (the set no longer waits for it).
    await sql(primary, "INSERT INTO acked (id) VALUES (4000000)");
  });
});
