import { expect } from "@jest/globals";
import Docker from "dockerode";
import { cliEnvFor } from "../helpers/cli-env";
import { execFile } from "node:child_process";
import { mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import { restoreCommand } from "../../src/cli/backup-commands";
import { createLogger } from "../../src/log";
import path from "node:path";
import { promisify } from "node:util";
import { projectRoot } from "../../src/util/project-root";
import { tempHome } from "../helpers/home";
import type { BackupManifest } from "../../src/backup/manifest";
import { describeOnEachDriver } from "../helpers/drivers";
import { freePort } from "../helpers/ports";
import { useTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";
import { backupHelpers } from "../helpers/backups";
import { filesHolding, nodeServerKey, pemBodyLine, servedCertificate } from "../helpers/tls";

const run = promisify(execFile);

/**
 * The backup domain's scenario on every driver: a full and an incremental,
 * each taken under a writer and restore-tested (every table's checksum at a
 * reference point taken on a replica); then the chain restored to a quiet named point
 * matches the source in pg_dumpall. On Docker every byte goes through
 * `docker exec` and the restored copies are containers reading the mounted
 * WAL archive.
 */
describeOnEachDriver("backups restore exactly", (driver, overrides) => {
  // Two replicas: the restore test pauses one that is not the only failover candidate.
  const cluster = useTestCluster("backup-each", { ...overrides, replicaCount: 2 });
  const primary = () => cluster.service.nodes[0]!;
  const sql = <T = Record<string, unknown>>(text: string) => sqlOn<T>(primary(), cluster.service.secrets, text);
  let incremental: BackupManifest;
  // A backup and a restore each move every byte through `docker exec` on Docker: measured on a
  // loaded 2-core machine, the full's backup 45 s and its restore-test copy 55 s (local: a few seconds
  // each), which left the default 120 s no headroom; at a load of 15, a restore's copy alone took 75-90 s.
  const backupAndRestoreTestMs = driver === "docker" ? 240_000 : undefined;

  const { backupUnderWriter, restoreTest, quietPoint, comparableDump } = backupHelpers(cluster);

  test(
    "a full backup under a writer restores to its reference point",
    async () => {
      await sql("CREATE TABLE ledger (id bigserial PRIMARY KEY, note text, pad text)");
      await sql("CREATE TABLE big (id int PRIMARY KEY, v text)");
      await sql("INSERT INTO big SELECT g, md5(g::text) || repeat('b', 40) FROM generate_series(1, 100000) g");
      await sql("CREATE TABLE toasty (id int PRIMARY KEY, doc text)");
      await sql("ALTER TABLE toasty ALTER COLUMN doc SET STORAGE EXTERNAL");
      await sql("INSERT INTO toasty SELECT g, repeat(md5(g::text), 400) FROM generate_series(1, 100) g");
      const full = await backupUnderWriter("full");
      expect(full).toMatchObject({ type: "full", status: "completed" });
      await restoreTest(full.id);
    },
    backupAndRestoreTestMs,
  );

  test(
    "an incremental after updates, a TRUNCATE and a new table stores blocks and restores to its reference point",
    async () => {
      await sql("UPDATE big SET v = 'changed' WHERE id BETWEEN 5000 AND 5500");
      await sql("TRUNCATE toasty");
      await sql("INSERT INTO toasty SELECT g, repeat('t', 3000) FROM generate_series(1, 20) g");
      await sql("CREATE TABLE later (id int PRIMARY KEY)");
      await sql("INSERT INTO later SELECT generate_series(1, 1000)");
      // The backup holds a pg_hba.conf as a release before TLS (or a hand edit) left it: a line that admits plaintext.
      // A copy restored from it must get Relevo's own (hostssl only) all the same (the CLI's restore below checks).
      const { driver } = cluster.service;
      const managedHba = (await driver.readFile(primary(), "pg_hba.conf"))!.toString("utf8");
      await driver.writeFile(primary(), "pg_hba.conf", `${managedHba}host all all 0.0.0.0/0 scram-sha-256\n`);
      await sql("SELECT pg_reload_conf()");
      try {
        incremental = await backupUnderWriter("incremental");
      } finally {
        await driver.writeFile(primary(), "pg_hba.conf", managedHba);
        await sql("SELECT pg_reload_conf()");
      }
      expect(incremental).toMatchObject({ type: "incremental", status: "completed" });
      expect(incremental.blocksStored).toBeGreaterThan(0);
      await restoreTest(incremental.id);
    },
    backupAndRestoreTestMs,
  );

  /**
   * One restore of the chain serves what the API's restore to a named point
   * and the CLI's restore into a directory each promised in a test of their
   * own: both run restoreBackup with the same driver, and on Docker each
   * restore moves every byte through `docker exec` (25 s in the last CI run,
   * 90 s at a load of 11), so the copy the CLI makes is the one compared with
   * the source. The API's restore to a named point is compared with
   * pg_dumpall in backup-chain.test.ts and backup-restore.test.ts; on Docker
   * the service's own restores into containers are the restore tests above.
   */
  test(
    "CLI: the chain restored to a quiet named point in an empty directory (on Docker a container on it) matches the source in pg_dumpall; restore stop stops it",
    async () => {
      await quietPoint("each-quiet");
      const env = cliEnvFor(cluster.config);
      // An empty directory is a new one: taken.
      const dir = path.join(await tempHome("cli-copy"), "copy");
      await mkdir(dir);
      const port = await freePort();
      const bin = path.join(projectRoot(), "bin/relevo");
      const restored = await run(
        "node",
        [bin, "restore", "--to", dir, "--port", String(port), "--backup", incremental.id, "--name", "each-quiet"],
        {
          env,
        },
      );
      let stopped = false;
      try {
        const uri = restored.stdout.trim().split("\n").pop()!;
        expect((await run("psql", [uri, "-Atc", "SELECT count(*) FROM later"])).stdout.trim()).toBe("1000");
        // The backup's pg_hba.conf admitted plaintext; the copy's is Relevo's: a login without TLS is refused.
        const plaintext = new URL(uri);
        plaintext.search = "";
        plaintext.searchParams.set("sslmode", "disable");
        await expect(run("psql", [plaintext.toString(), "-XAtc", "SELECT 1"])).rejects.toMatchObject({
          stderr: expect.stringMatching(/no pg_hba\.conf entry for host .* no encryption/),
        });
        // The copy serves a certificate of its own (its own name, for its address), never a member's; and no member's
        // key is in the copy's files (restored byte for byte from the backups) nor in the repository.
        const password = cluster.service.secrets.superuserPassword;
        const copyCertificate = await servedCertificate({ name: "copy", host: primary().host, port }, password);
        expect(copyCertificate.subject.CN).toMatch(/^copy-/);
        expect(copyCertificate.subjectaltname).toBe(`IP Address:${primary().host}`);
        for (const member of cluster.service.nodes) {
          expect((await servedCertificate(member, password)).serialNumber).not.toBe(copyCertificate.serialNumber);
          const key = pemBodyLine(await nodeServerKey(cluster.service.driver, cluster.config.clusterName, member));
          expect(await filesHolding(path.join(dir, "data"), key)).toEqual([]);
          expect(await filesHolding(cluster.config.repository, key)).toEqual([]);
        }
        const [source, copy] = [await comparableDump(primary()), await comparableDump({ name: "each-copy", host: primary().host, port })];
        expect(source.length).toBeGreaterThan(100_000);
        expect(copy).toEqual(source);
        // The copy's files are in the directory given, whichever driver runs it.
        expect(await readFile(path.join(dir, "data", "PG_VERSION"), "utf8")).toBe("15\n");
        await run("node", [bin, "restore", "stop", "--to", dir], { env });
        stopped = true;
        await expect(run("psql", [uri, "-Atc", "SELECT 1"])).rejects.toBeTruthy();
      } finally {
        // A failure above must not leave the copy running past the file.
        if (!stopped) await run("node", [bin, "restore", "stop", "--to", dir], { env }).catch(() => undefined);
      }
      if (driver === "docker") {
        // Nothing of the copy runs on: neither its container nor the tools container its files were written through.
        const running = await new Docker({ socketPath: "/var/run/docker.sock" }).listContainers({
          filters: { name: [`relevo-${cluster.config.clusterName}-copy-`] },
        });
        expect(running.map((info) => info.Names)).toEqual([]);
      }
    },
    backupAndRestoreTestMs,
  );

  test("CLI: restore --to a directory that is not empty is refused before anything is written, whichever driver", async () => {
    const dir = path.join(await tempHome("cli-not-empty"), "copy");
    await mkdir(dir);
    await writeFile(path.join(dir, "notes.txt"), "mine\n");
    const output = { out: () => undefined, terminal: false };
    await expect(
      restoreCommand(cluster.config, { to: dir, port: await freePort() }, createLogger({ level: "silent" }), output),
    ).rejects.toMatchObject({ code: "TARGET_NOT_EMPTY", message: expect.stringContaining(`${dir} is not empty (it holds notes.txt)`) });
    expect(await readdir(dir)).toEqual(["notes.txt"]);
    expect(await readFile(path.join(dir, "notes.txt"), "utf8")).toBe("mine\n");
  });

  test("CLI: status --json shows every node with the driver's view (its container on Docker)", async () => {
    const status = JSON.parse(
      (await run("node", [path.join(projectRoot(), "bin/relevo"), "status", "--json"], { env: cliEnvFor(cluster.config) })).stdout,
    ) as {
      nodes: Array<{
        name: string;
        role: string;
        driver: { kind: string; containerId: string | null; container: { name: string; status: string } | null };
      }>;
    };
    expect(status.nodes.map((n) => `${n.name}:${n.role}:${n.driver.kind}`)).toEqual([`node1:primary:${driver}`, `node2:replica:${driver}`]);
    for (const member of status.nodes) {
      if (driver === "docker")
        expect(member.driver).toMatchObject({
          containerId: expect.stringMatching(/^[0-9a-f]{64}$/),
          container: { name: `relevo-${cluster.config.clusterName}-${member.name}`, status: "running" },
        });
      else expect(member.driver.containerId).toBeNull();
    }
  });
});
