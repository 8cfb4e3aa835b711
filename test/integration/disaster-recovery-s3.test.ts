import { expect } from "@jest/globals";
import { execFile } from "node:child_process";
import { mkdir, readdir, rm } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { loadConfig } from "../../src/config/config";
import { createLogger } from "../../src/log";
import type { NodeRef } from "../../src/nodes/node-driver";
import { segmentName, segmentNumber } from "../../src/postgres/wal-names";
import { startRelevo, type RelevoService } from "../../src/service";
import { projectRoot } from "../../src/util/project-root";
import { cliEnvFor } from "../helpers/cli-env";
import { tempHome } from "../helpers/home";
import { freePort } from "../helpers/ports";
import { startS3Server, type S3TestServer } from "../helpers/s3-server";
import { eventually, startTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";

const run = promisify(execFile);
const BIN = path.join(projectRoot(), "bin/relevo");
const BUCKET = "relevo-disaster";

/**
 * The CLI's restores with repository 1 in a bucket of a real S3-protocol
 * server (s3rver on loopback), and nothing of the archive on Relevo's
 * host: a copy restored (`relevo restore --to`), the whole cluster rebuilt
 * after every node was lost (`relevo restore --cluster`), and a start-over
 * (`relevo up --new-cluster`) that leaves the old generation in the bucket.
 */
describe("disaster recovery with the repository in an S3 bucket", () => {
  let server: S3TestServer | undefined;
  const env: Record<string, string> = {};
  beforeAll(async () => {
    server = await startS3Server({ buckets: [BUCKET] });
    Object.assign(env, {
      RELEVO_REPO1_TYPE: "s3",
      RELEVO_REPO1_S3_BUCKET: BUCKET,
      RELEVO_REPO1_S3_ENDPOINT: server.endpoint,
      RELEVO_REPO1_S3_REGION: "us-east-1",
      RELEVO_REPO1_S3_URI_STYLE: "path",
      RELEVO_REPO1_S3_PREFIX: "dr/",
      RELEVO_REPO1_S3_ACCESS_KEY_ID: server.accessKeyId,
      RELEVO_REPO1_S3_SECRET_ACCESS_KEY: server.secretAccessKey,
    });
  });
  afterAll(async () => {
    await server?.stop();
    if (server) await rm(server.directory, { recursive: true, force: true });
  });
  /** Keys under the bucket's prefix, from s3rver's own files (`dr/<rest>`), those starting with `prefix`. */
  const objectsUnder = async (prefix: string): Promise<string[]> => {
    const root = path.join(server!.directory, BUCKET);
    const entries = await readdir(root, { recursive: true, withFileTypes: true }).catch(() => []);
    return entries
      .filter((entry) => entry.isFile() && !entry.name.startsWith(".") && entry.name.endsWith("._S3rver_object"))
      .map((entry) => path.relative(root, path.join(entry.parentPath, entry.name)).replace(/\._S3rver_object$/, ""))
      .filter((key) => key.startsWith(`dr/${prefix}`));
  };

  test("relevo restore --to copies from the bucket; relevo restore --cluster rebuilds the lost cluster from it, the spool lost too; relevo up --new-cluster starts generation 1 there", async () => {
    const first = await startTestCluster("dr-s3", {}, { env });
    const { config, service } = first;
    // Info: a failed command's error (its stderr) then shows what the restore did.
    const cliEnv = cliEnvFor(config, { ...env, RELEVO_LOG_LEVEL: "info" });
    const primary = (): NodeRef => service.nodes[0]!;
    const sql = <T = Record<string, unknown>>(text: string, node: NodeRef = primary()) => sqlOn<T>(node, service.secrets, text);
    let again: RelevoService | null = null;
    let stopped = false;
    const copyDir = path.join(await tempHome("dr-s3-copy"), "copy");
    let copyRunning = false;
    try {
      await sql("CREATE TABLE precious AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g");
      const full = await (await service.backups.start("full")).done;
      expect(full.status).toBe("completed");
      await sql("INSERT INTO precious SELECT g, md5(g::text) FROM generate_series(20001, 25000) g");
      // Switched and pushed: in the bucket (the spool is wiped below, so only the bucket holds it).
      const timeline = (await sql<{ timeline: number }>("SELECT timeline_id AS timeline FROM pg_control_checkpoint()"))[0]!.timeline;
      const switched = (await sql<{ lsn: string }>("SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn;
      await service.archiver.waitForArchived(timeline, switched, switched, 90_000);
      const pushed = segmentName(timeline, segmentNumber(switched));
      expect(await objectsUnder(`archive/${pushed.slice(0, 16)}/${pushed}`)).toHaveLength(1);

      // A copy from the CLI, read from the bucket: every row pushed.
      await mkdir(copyDir);
      const port = await freePort();
      const restored = await run("node", [BIN, "restore", "--to", copyDir, "--port", String(port), "--backup", full.id], {
        env: cliEnv,
        timeout: 240_000,
      });
      copyRunning = true;
      const uri = restored.stdout.trim().split("\n").pop()!;
      expect((await run("psql", [uri, "-Atc", "SELECT count(*) FROM precious"])).stdout.trim()).toBe("25000");
      await run("node", [BIN, "restore", "stop", "--to", copyDir], { env: cliEnv });
      copyRunning = false;

      // Every node lost, and the spool with them (Relevo's data home keeps only its secrets and records).
      await first.stop();
      stopped = true;
      for (const node of service.nodes) await service.driver.destroy(node);
      await rm(path.join(config.home, "wal-spool"), { recursive: true, force: true });
      const recovered = await run("node", [BIN, "restore", "--cluster"], { env: cliEnv, timeout: 240_000 });
      expect(recovered.stdout).toMatch(/node1: restored from the repository, primary\n(.|\n)*cluster rebuilt from backup \S+-F/);
      expect(await sql("SELECT count(*)::int AS n, max(id) AS max FROM precious")).toEqual([{ n: 25000, max: 25000 }]);

      // Lost again, and this time started over: an empty cluster in the bucket's generation 1, generation 0 left as it was.
      const before = await objectsUnder("manifests/");
      expect(before).toHaveLength(1);
      for (const node of service.nodes) await service.driver.destroy(node);
      // The operator's environment names the bucket (loadConfig reads the repositories from it, not from overrides).
      again = await startRelevo(loadConfig({ ...env }, { ...config }), createLogger({ level: "silent" }), { newCluster: true });
      const started = again;
      await eventually(() => (started.collector.latest?.primary === "node1" ? true : undefined), { what: "the new primary" });
      expect(await sql("SELECT to_regclass('precious') IS NULL AS empty")).toEqual([{ empty: true }]);
      expect(started.repository.generation).toBe(1);
      const taken = await (await started.backups.start("full")).done;
      // The new generation's backup in the bucket under g1/, generation 0's manifests as they were.
      expect(await objectsUnder("g1/manifests/")).toEqual([`dr/g1/manifests/${taken.id}`]);
      expect(await objectsUnder("manifests/")).toEqual(before);
      expect((await started.backups.list()).map((backup) => backup.id)).toEqual([taken.id]);
    } finally {
      if (copyRunning) await run("node", [BIN, "restore", "stop", "--to", copyDir], { env: cliEnv }).catch(() => undefined);
      await again?.stop({ reason: "test finished" });
      if (!stopped) await first.stop();
      for (const node of service.nodes) await service.driver.destroy(node).catch(() => undefined);
    }
  }, 600_000);
});
