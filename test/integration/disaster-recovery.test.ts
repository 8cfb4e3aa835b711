import { expect } from "@jest/globals";
import { cliEnvFor } from "../helpers/cli-env";
import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import { loadConfig } from "../../src/config/config";
import { createLogger } from "../../src/log";
import { startRelevo } from "../../src/service";
import { projectRoot } from "../../src/util/project-root";
import { eventually, startTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";

const run = promisify(execFile);
const BIN = path.join(projectRoot(), "bin/relevo");

/** The CLI's environment for the cluster a test started. */
const cliEnvOf = cliEnvFor;

describe("disaster recovery: relevo restore --cluster", () => {
  test("every node stopped and deleted: the CLI rebuilds a streaming pair from the repository with everything archived, and Relevo manages it again", async () => {
    const first = await startTestCluster("disaster");
    const { config, service } = first;
    const [primary, replica] = service.nodes as [(typeof service.nodes)[0], (typeof service.nodes)[0]];
    const sql = <T = Record<string, unknown>>(text: string, node = primary) => sqlOn<T>(node, service.secrets, text);
    // The replica too comes from the repository (the backup and the archive), not from a pg_basebackup of the new primary.
    const cliEnv = cliEnvOf(config, { RELEVO_REPLICA_SEED: "repository" });
    let stopped = false;
    try {
      await sql("CREATE TABLE precious AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g");
      await (
        await service.backups.start("full")
      ).done;
      // Written after the backup, and not followed by a segment switch: it
      // exists only in the segment the archiver is still receiving.
      await sql("INSERT INTO precious SELECT g, md5(g::text) FROM generate_series(20001, 25000) g");
      const { lsn } = (await sql<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn"))[0]!;
      await eventually(
        async () =>
          (
            await sql<{ ok: boolean }>(
              `SELECT flush_lsn >= '${lsn}' AS ok FROM pg_stat_replication WHERE application_name = 'relevo_archiver'`,
            )
          )[0]?.ok
            ? true
            : undefined,
        { what: "the archiver to have received the last insert" },
      );

      await first.stop();
      stopped = true;
      // While a node still exists this is not a disaster: refused, naming it, nothing touched.
      const refused = await run("node", [BIN, "restore", "--cluster"], { env: cliEnv }).catch(
        (error: { code: number; stderr: string }) => error,
      );
      expect(refused).toMatchObject({ code: 1, stderr: expect.stringContaining("node1") });
      const misused = await run("node", [BIN, "restore", "--cluster", "--to", "/tmp/x"], { env: cliEnv }).catch(
        (error: { code: number; stderr: string }) => error,
      );
      expect(misused).toMatchObject({ code: 64, stderr: expect.stringContaining("--to and --port do not apply") });

      for (const node of service.nodes) await service.driver.destroy(node);
      const recovered = await run("node", [BIN, "restore", "--cluster"], { env: cliEnv, timeout: 240000 });
      expect(recovered.stdout).toMatch(
        /node1: restored from the repository, primary\nnode2: seeded from the repository, streaming from node1\ncluster rebuilt from backup \S+-F/,
      );

      // Every row, including those only the archiver's partial segment held, on both nodes, streaming.
      expect(await sql("SELECT count(*)::int AS n, max(id) AS max FROM precious")).toEqual([{ n: 25000, max: 25000 }]);
      expect(await sql("SELECT pg_is_in_recovery() AS r")).toEqual([{ r: false }]);
      await eventually(
        async () => ((await sql<{ n: number }>("SELECT count(*)::int AS n FROM precious", replica))[0]?.n === 25000 ? true : undefined),
        {
          what: "the replica to have the data",
        },
      );
      expect(await sql("SELECT application_name, state FROM pg_stat_replication WHERE application_name = 'node2'")).toEqual([
        { application_name: "node2", state: "streaming" },
      ]);
      const { timeline } = (await sql<{ timeline: number }>("SELECT timeline_id AS timeline FROM pg_control_checkpoint()"))[0]!;
      expect(timeline).toBeGreaterThan(1);

      // Relevo takes the rebuilt cluster over as it was: primary and streaming replica, a backup works on the new timeline.
      const again = await startRelevo(loadConfig({}, { ...config }), createLogger({ level: "silent" }));
      try {
        const topology = await eventually(
          () => {
            const latest = again.collector.latest;
            return latest?.primary === "node1" && latest.nodes.find((node) => node.name === "node2")?.replication?.state === "streaming"
              ? latest
              : undefined;
          },
          { what: "the topology of the rebuilt cluster" },
        );
        expect(topology.primary).toBe("node1");
        // An incremental across the timeline change: its reference (the full on timeline 1) ended before the branch.
        await sql("UPDATE precious SET id = id WHERE id <= 100");
        const incremental = await (await again.backups.start("incremental")).done;
        expect(incremental).toMatchObject({ type: "incremental", timeline, changesFrom: "wal", promotedToFull: null });
        const verified = await again.backups.verify(incremental.id, { restoreTest: true });
        expect(verified.verification).toMatchObject({ contentOk: true, restoreTest: { ok: true } });
        const backup = await (await again.backups.start("full")).done;
        expect(backup.timeline).toBe(timeline);
      } finally {
        await again.stop({ reason: "test finished" });
      }
    } finally {
      if (!stopped) await first.stop();
    }
  });

  test("rebuilt at a point before the newest backup: the next incremental cannot build on it (another history) and is taken as a full", async () => {
    const first = await startTestCluster("disaster-branch");
    const { config, service } = first;
    const primary = service.nodes[0]!;
    const sql = <T = Record<string, unknown>>(text: string) => sqlOn<T>(primary, service.secrets, text);
    let stopped = false;
    try {
      await sql("CREATE TABLE kept AS SELECT g AS id FROM generate_series(1, 1000) g");
      await (
        await service.backups.start("full")
      ).done;
      await sql("SELECT pg_create_restore_point('before-the-incremental')");
      await sql("INSERT INTO kept SELECT g FROM generate_series(1001, 2000) g");
      const incremental = await (await service.backups.start("incremental")).done;
      expect(incremental.type).toBe("incremental");
      await service.backups.waitForIdle();
      await first.stop();
      stopped = true;
      for (const node of service.nodes) await service.driver.destroy(node);
      const recovered = await run("node", [BIN, "restore", "--cluster", "--name", "before-the-incremental"], {
        env: cliEnvOf(config),
        timeout: 240000,
      });
      expect(recovered.stdout).toMatch(/cluster rebuilt from backup \S+-F/);
      expect(await sql("SELECT count(*)::int AS n FROM kept")).toEqual([{ n: 1000 }]);

      const again = await startRelevo(loadConfig({}, { ...config }), createLogger({ level: "silent" }));
      try {
        await eventually(() => (again.collector.latest?.primary === "node1" ? true : undefined), { what: "the rebuilt primary" });
        // The newest backup (the incremental) ended after the new timeline branched off: nothing on this history to build on.
        const next = await (await again.backups.start("incremental")).done;
        expect(next).toMatchObject({
          type: "full",
          reference: null,
          status: "completed",
          promotedToFull: expect.stringMatching(/after timeline \d+ branched off/),
        });
        expect(next.id).toMatch(/-F$/);
        const verified = await again.backups.verify(next.id, { restoreTest: true });
        expect(verified.verification).toMatchObject({ contentOk: true, restoreTest: { ok: true } });
      } finally {
        await again.stop({ reason: "test finished" });
      }
    } finally {
      if (!stopped) await first.stop();
    }
  });
});
