import { expect } from "@jest/globals";
import { freePort } from "../helpers/ports";
import { eventually, startTestCluster, type TestCluster } from "../helpers/service";
import { graphqlRequest } from "../helpers/graphql-client";
import { sqlOn } from "../helpers/sql";
import { loadConfig } from "../../src/config/config";
import { createLogger } from "../../src/log";
import { startRelevo, type RelevoService } from "../../src/service";
import { ErrorCode } from "../../src/errors";

/** Two service instances on one cluster: one data home, Redis and set of nodes; each its own API. */
describe("two Relevo instances on one cluster", () => {
  let first: TestCluster;
  let second: RelevoService | null = null;

  beforeAll(async () => {
    // Retention would expire the older backups this suite counts.
    first = await startTestCluster("two-instances", { schedulerPollMs: 200, leaseTtlMs: 2000, retentionFull: 10 });
    second = await startRelevo(
      loadConfig({}, { ...first.config, apiPort: await freePort() }),
      createLogger({ level: first.config.logLevel }),
    );
  });
  afterAll(async () => {
    // The second instance adopted the first one's Redis and nodes: it leaves them to the first.
    await second?.stop({ reason: "test finished", keepNodes: true, keepRedis: true });
    await first?.stop();
  });

  const archiverSessions = async (): Promise<number> =>
    (
      await sqlOn<{ n: number }>(
        first.service.nodes[0]!,
        first.service.secrets,
        "SELECT count(*)::int AS n FROM pg_stat_replication WHERE application_name = 'relevo_archiver'",
      )
    )[0]!.n;

  test("one WAL archiver between them, and exactly one after its instance stops", async () => {
    await eventually(async () => ((await archiverSessions()) === 1 ? true : undefined), { what: "an archiver streaming" });
    expect([first.service.archiver.running, second!.archiver.running].filter(Boolean)).toHaveLength(1);
    // Over several renewals, never two (the slot would refuse the second, but the lease keeps it from trying).
    for (let i = 0; i < 5; i += 1) {
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(await archiverSessions()).toBe(1);
    }
  });

  test("a backup running in one instance is BACKUP_IN_PROGRESS in the other", async () => {
    await sqlOn(
      first.service.nodes[0]!,
      first.service.secrets,
      "CREATE TABLE two AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 300000) g",
    );
    const running = await first.service.backups.start("full");
    await expect(second!.backups.start("full")).rejects.toMatchObject({
      code: ErrorCode.BackupInProgress,
      message: expect.stringContaining("another Relevo instance"),
    });
    await running.done;
    // Released: the other instance may back up now.
    const next = await second!.backups.start("full");
    await next.done;
  });

  test("each scheduled run happens once: three runs, three backups, none skipped", async () => {
    const before = new Set((await first.service.backups.list()).map((manifest) => manifest.id));
    for (let run = 1; run <= 3; run += 1) {
      const count = run;
      await graphqlRequest(first.url, `mutation { runScheduleNow(name: "full-backup") }`, { token: first.token("operator") });
      await eventually(
        async () => {
          const fresh = (await first.service.backups.list()).filter(
            (manifest) => !before.has(manifest.id) && manifest.status === "completed",
          );
          return fresh.length === count && !first.service.backups.runningId && !second!.backups.runningId ? true : undefined;
        },
        { what: `scheduled run ${run} done`, timeoutMs: 60000 },
      );
    }
    // Both instances poll the same jobs every 200 ms; had both taken a run, the loser would have found the backup lease held.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const skipped = await graphqlRequest<{ events: { edges: unknown[] } }>(
      first.url,
      `{ events(first: 10, kinds: ["schedule:skipped", "schedule:failed"]) { edges { cursor } } }`,
      {
        token: first.token("viewer"),
      },
    );
    expect(skipped.data!.events.edges).toEqual([]);
    expect((await first.service.backups.list()).filter((manifest) => !before.has(manifest.id))).toHaveLength(3);
  });

  test("when the instance running the archiver stops, the other takes over within the lease's time to live", async () => {
    expect([first.service.archiver.running, second!.archiver.running].filter(Boolean)).toHaveLength(1);
    let survivor: RelevoService;
    if (first.service.archiver.running) {
      // The first instance owns Redis and the nodes: it stops its service part only, and the second carries on.
      await first.service.stop({ reason: "test", keepNodes: true, keepRedis: true });
      survivor = second!;
      second = null;
      first = { ...first, stop: () => survivor.stop({ reason: "test finished" }) };
    } else {
      await second!.stop({ reason: "test", keepNodes: true, keepRedis: true });
      second = null;
      survivor = first.service;
    }
    // The stopping instance gave the lease up: the other takes it at its next attempt, every third of the time to
    // live, well within the time to live (15 s allowed before let an instance that tried only every 6 s pass).
    const stoppedAt = Date.now();
    const { leaseTtlMs } = first.config;
    await eventually(() => (survivor.archiver.running ? true : undefined), {
      what: "the other instance running the archiver",
      timeoutMs: 5 * leaseTtlMs, // the bound is asserted below, with the time it took
    });
    expect(Date.now() - stoppedAt).toBeLessThan(leaseTtlMs);
    // Then its pg_receivewal connects and streams (the slot is free once the stopped one's sender has exited).
    await eventually(async () => ((await archiverSessions().catch(() => 0)) === 1 ? true : undefined), {
      what: "the archiver streaming from the other instance",
      timeoutMs: 10000,
    });
  });
});
