import { expect } from "@jest/globals";
import { graphqlRequest } from "../helpers/graphql-client";
import { configKeys } from "../../src/config/config-keys";
import { eventually, useTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";

type ScheduleRow = { name: string; cron: string | null; paused: boolean; nextRunAt: string | null; lastFinishedAt: string | null };
const SCHEDULE_FIELDS = "name description cron paused nextRunAt lastRunAt lastFinishedAt lastFailure";

describe("scheduled backups (Agenda on Relevo's Redis)", () => {
  const defaultSchedule = {
    scheduleFullBackup: configKeys.scheduleFullBackup.default,
    scheduleDifferentialBackup: configKeys.scheduleDifferentialBackup.default,
    scheduleIncrementalBackup: configKeys.scheduleIncrementalBackup.default,
    scheduleVerify: configKeys.scheduleVerify.default,
  };
  const cluster = useTestCluster("scheduler", {
    schedulerPollMs: 300,
    schedulerLockLifetimeMs: 2000,
    scheduleRetryDelayMs: 500,
    scheduleRetries: 6,
    ...defaultSchedule,
  });
  const schedules = async (): Promise<ScheduleRow[]> =>
    (
      await graphqlRequest<{ schedules: ScheduleRow[] }>(cluster.url, `{ schedules { ${SCHEDULE_FIELDS} } }`, {
        token: cluster.token("viewer"),
      })
    ).data!.schedules;

  test("the default schedule: a weekly full, daily differentials, hourly incrementals and a daily verification, each with a next run", async () => {
    const rows = await schedules();
    expect(rows.map((row) => [row.name, row.cron, row.paused])).toEqual([
      ["full-backup", "0 3 * * 0", false],
      ["differential-backup", "0 3 * * 1-6", false],
      ["incremental-backup", "15 * * * *", false],
      ["verify-newest", "30 4 * * *", false],
    ]);
    for (const row of rows) expect(Date.parse(row.nextRunAt!)).toBeGreaterThan(Date.now());
  });

  test("a run of the schedule takes a backup; one that finds a backup running is skipped and recorded", async () => {
    await sqlOn(cluster.service.nodes[0]!, cluster.service.secrets, "CREATE TABLE sched AS SELECT g FROM generate_series(1, 200000) g");
    const running = await cluster.service.backups.start("full");
    await graphqlRequest(cluster.url, `mutation { runScheduleNow(name: "full-backup") }`, { token: cluster.token("operator") });
    const skipped = await eventually(
      async () => {
        const response = await graphqlRequest<{ events: { edges: Array<{ node: { kind: string; data: { name: string } } }> } }>(
          cluster.url,
          `{ events(first: 5, kinds: ["schedule:skipped"]) { edges { node { kind data } } } }`,
          { token: cluster.token("viewer") },
        );
        return response.data?.events.edges[0]?.node;
      },
      { timeoutMs: 30000 },
    );
    expect(skipped.data.name).toBe("full-backup");
    await running.done;

    await graphqlRequest(cluster.url, `mutation { runScheduleNow(name: "full-backup") }`, { token: cluster.token("operator") });
    const completed = await eventually(
      async () => {
        const list = (await cluster.service.backups.list()).filter((m) => m.status === "completed");
        return list.length === 2 ? list : undefined;
      },
      { timeoutMs: 60000 },
    );
    expect(completed[1]!.id).not.toBe(running.manifest.id);
    await cluster.service.backups.waitForIdle();

    // The differential and incremental jobs take block-level backups on the newest full / newest backup.
    for (const [name, type, reference] of [
      ["differential-backup", "differential", completed[1]!.id],
      ["incremental-backup", "incremental", null],
    ] as const) {
      const before = (await cluster.service.backups.list()).length;
      await graphqlRequest(cluster.url, `mutation { runScheduleNow(name: "${name}") }`, { token: cluster.token("operator") });
      const taken = await eventually(
        async () => {
          const list = await cluster.service.backups.list();
          return list.length > before && list[list.length - 1]!.status === "completed" ? list[list.length - 1] : undefined;
        },
        { timeoutMs: 60000, what: name },
      );
      expect(taken).toMatchObject({ type, reference: reference ?? expect.stringMatching(/-D$/), changesFrom: "wal" });
      await cluster.service.backups.waitForIdle();
    }
  });

  test("a failed run is retried with growing delays, recorded each time, until one succeeds", async () => {
    const primary = cluster.service.nodes[0]!;
    const before = new Set((await cluster.service.backups.list()).map((m) => m.id));
    await cluster.service.failover.setMaintenance(true); // an outage to wait out, not to fail over
    await cluster.service.driver.stop(primary, { mode: "fast", timeoutMs: 30000 });
    await eventually(() => (cluster.service.collector.latest?.primary === null ? true : undefined), {
      what: "the primary seen down",
    });
    await graphqlRequest(cluster.url, `mutation { runScheduleNow(name: "full-backup") }`, { token: cluster.token("operator") });
    type Failed = { attempt: number; retryInMs: number | null; error: string };
    const failures = async (): Promise<Failed[]> =>
      (
        await graphqlRequest<{ events: { edges: Array<{ node: { data: Failed } }> } }>(
          cluster.url,
          `{ events(first: 20, kinds: ["schedule:failed"]) { edges { node { data } } } }`,
          { token: cluster.token("viewer") },
        )
      )
        .data!.events.edges.map((edge) => edge.node.data)
        .reverse();
    const firstTwo = await eventually(
      async () => {
        const seen = await failures();
        return seen.length >= 2 ? seen : undefined;
      },
      { what: "two failed attempts", timeoutMs: 30000 },
    );
    expect(firstTwo.slice(0, 2)).toEqual([
      expect.objectContaining({ attempt: 1, retryInMs: 500, error: expect.stringContaining("no primary") }),
      expect.objectContaining({ attempt: 2, retryInMs: 1000 }),
    ]);
    await cluster.service.driver.start(primary, { timeoutMs: 60000 });
    await cluster.service.failover.setMaintenance(false);
    // Retention may expire an older backup meanwhile: look for the new one, not a count.
    const taken = await eventually(
      async () => {
        const fresh = (await cluster.service.backups.list()).filter((m) => !before.has(m.id) && m.status === "completed");
        return fresh.length > 0 ? fresh : undefined;
      },
      { what: "a retry to take the backup", timeoutMs: 90000 },
    );
    expect(taken).toHaveLength(1);
    // The recurring schedule itself is untouched: still due at its cron time.
    const full = (await schedules()).find((row) => row.name === "full-backup")!;
    expect(Date.parse(full.nextRunAt!)).toBeGreaterThan(Date.now() + 3600 * 1000);
  });

  test("schedules can be changed, paused and resumed by an operator, not by a viewer", async () => {
    const denied = await graphqlRequest(cluster.url, `mutation { pauseSchedule(name: "full-backup") { name } }`, {
      token: cluster.token("viewer"),
    });
    expect(denied.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    const paused = await graphqlRequest<{ pauseSchedule: ScheduleRow[] }>(
      cluster.url,
      `mutation { pauseSchedule(name: "full-backup") { ${SCHEDULE_FIELDS} } }`,
      { token: cluster.token("operator") },
    );
    expect(paused.data!.pauseSchedule.find((row) => row.name === "full-backup")).toMatchObject({ paused: true, nextRunAt: null });
    await graphqlRequest(cluster.url, `mutation { pauseSchedule(name: "full-backup", paused: false) { name } }`, {
      token: cluster.token("operator"),
    });
    const updated = await graphqlRequest<{ updateSchedule: ScheduleRow[] }>(
      cluster.url,
      `mutation { updateSchedule(name: "full-backup", cron: "15 2 * * *") { ${SCHEDULE_FIELDS} } }`,
      {
        token: cluster.token("operator"),
      },
    );
    expect(updated.data!.updateSchedule.find((row) => row.name === "full-backup")).toMatchObject({ cron: "15 2 * * *", paused: false });
    const unknown = await graphqlRequest(cluster.url, `mutation { runScheduleNow(name: "nightly-dance") }`, {
      token: cluster.token("operator"),
    });
    expect(unknown.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
  });

  test("deleteSchedule removes a job's schedule (no cron, no next run); updateSchedule makes it again; a viewer may not", async () => {
    const denied = await graphqlRequest(cluster.url, `mutation { deleteSchedule(name: "differential-backup") { name } }`, {
      token: cluster.token("viewer"),
    });
    expect(denied.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    const deleted = await graphqlRequest<{ deleteSchedule: ScheduleRow[] }>(
      cluster.url,
      `mutation { deleteSchedule(name: "differential-backup") { ${SCHEDULE_FIELDS} } }`,
      { token: cluster.token("operator") },
    );
    expect(deleted.errors).toBeUndefined();
    expect(deleted.data!.deleteSchedule.find((row) => row.name === "differential-backup")).toMatchObject({ cron: null, nextRunAt: null });
    // Only that one: the others keep their schedules.
    expect((await schedules()).filter((row) => row.cron !== null).map((row) => row.name)).toEqual([
      "full-backup",
      "incremental-backup",
      "verify-newest",
    ]);
    await graphqlRequest(cluster.url, `mutation { updateSchedule(name: "differential-backup", cron: "0 3 * * 1-6") { name } }`, {
      token: cluster.token("operator"),
    });
    const back = (await schedules()).find((row) => row.name === "differential-backup")!;
    expect(back.cron).toBe("0 3 * * 1-6");
    expect(Date.parse(back.nextRunAt!)).toBeGreaterThan(Date.now());
    const unknown = await graphqlRequest(cluster.url, `mutation { deleteSchedule(name: "nightly-dance") { name } }`, {
      token: cluster.token("operator"),
    });
    expect(unknown.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
  });
});
