import { expect } from "@jest/globals";
import { cliEnvFor } from "../helpers/cli-env";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tempHome } from "../helpers/home";
import { freePort } from "../helpers/ports";
import path from "node:path";
import { promisify } from "node:util";
import { loadConfig, type RelevoConfig } from "../../src/config/config";
import { createLogger } from "../../src/log";
import { withClusterRedis } from "../../src/cli/cluster-redis";
import { ClusterStateStore } from "../../src/failover/cluster-state";
import { volumeName } from "../../src/nodes/docker/container-spec";
import type { NodeDriver, NodeRef } from "../../src/nodes/node-driver";
import type { Secrets } from "../../src/secrets/secrets-store";
import { startRelevo, type RelevoService } from "../../src/service";
import { projectRoot } from "../../src/util/project-root";
import { makeComposeNodeContainer, TEST_IMAGE, type ComposeNodeContainer } from "../helpers/docker";
import { describeOnEachDriver, type TestDriver } from "../helpers/drivers";
import { failoverHelpers } from "../helpers/failover";
import { eventually, startTestCluster, type TestCluster, type TestClusterOptions } from "../helpers/service";
import { sqlOn } from "../helpers/sql";
import { Readable } from "node:stream";
import { buffer } from "node:stream/consumers";
import { archiveKey, archivePrefix, walFileNameOf } from "../../src/repository/repository-layout";
import { Repository, walSpoolDir } from "../../src/storage/repository";
import { openConfiguredRepository } from "../../src/storage/open-repository";
import { readRepositoryDescriptor, type RepositoryDescriptor } from "../../src/repository/repository-descriptor";

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
      await archiverHasReceived(primary, service.secrets, "the last insert");

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
    const first = await clusterWithKeptRows("disaster-branch");
    const { config, service, sql } = first;
    let stopped = false;
    try {
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

  test("an encrypted repository: restore --cluster without the pass is REPOSITORY_ACCESS_DENIED, touching nothing; with it the cluster is rebuilt", async () => {
    const pass = "the encrypted disaster's cipher pass";
    const first = await clusterWithKeptRows("disaster-encrypted", { env: { RELEVO_REPO1_CIPHER_PASS: pass } });
    const { config, service, sql } = first;
    let stopped = false;
    try {
      const systemIdentifier = await systemIdentifierOf(service.nodes[0]!, service.secrets);
      await first.stop();
      stopped = true;
      for (const node of service.nodes) await service.driver.destroy(node);
      const nodesBefore = await readdir(path.join(config.home, "nodes"));

      const refused = await run("node", [BIN, "restore", "--cluster"], { env: cliEnvOf(config) }).catch(
        (error: { code: number; stdout: string; stderr: string }) => error,
      );
      expect(refused).toMatchObject({ code: 77, stderr: expect.stringContaining("REPOSITORY_ACCESS_DENIED") });
      expect(refused.stderr).toContain("RELEVO_REPO1_CIPHER_PASS");
      expect(await readdir(path.join(config.home, "nodes"))).toEqual(nodesBefore);

      const recovered = await run("node", [BIN, "restore", "--cluster"], {
        env: cliEnvOf(config, { RELEVO_REPO1_CIPHER_PASS: pass }),
        timeout: 240000,
      });
      expect(recovered.stdout).toMatch(/cluster rebuilt from backup \S+-F/);
      for (const text of [recovered.stdout, recovered.stderr, refused.stdout, refused.stderr]) expect(text).not.toContain(pass);
      expect(await sql("SELECT count(*)::int AS n FROM kept")).toEqual([{ n: 1000 }]);

      // The service takes the rebuilt cluster over with the pass; repository.json names its cluster (encrypted: read under its keys).
      const again = await startRelevo(loadConfig({ RELEVO_REPO1_CIPHER_PASS: pass }, { ...config }), createLogger({ level: "silent" }));
      try {
        await eventually(() => (again.collector.latest?.primary === "node1" ? true : undefined), { what: "the rebuilt primary" });
        expect(await readRepositoryDescriptor(again.repository.objects)).toEqual({ format: 1, generation: 0, systemIdentifier });
      } finally {
        await again.stop({ reason: "test finished" });
      }
    } finally {
      if (!stopped) await first.stop();
    }
  });
});

/**
 * The runbook of issue 12 (items 4 and 5): a failover fences node1, then the
 * disk holding every data directory is lost, while the data home (repository,
 * secrets, node logs) and, on Docker, the node containers survive.
 */
describeOnEachDriver(
  "a lost disk after a failover: rebuilt from the repository, never replaced by an empty cluster",
  (driver, overrides) => {
    let first: TestCluster;
    let config: RelevoConfig;
    let nodes: NodeRef[];
    let secrets: Secrets;
    let rows = 0;
    let again: RelevoService | null = null;
    const quiet = createLogger({ level: "silent" });
    const sql = <T = Record<string, unknown>>(node: NodeRef, text: string) => sqlOn<T>(node, secrets, text);
    const node = (name: string): NodeRef => nodes.find((candidate) => candidate.name === name)!;

    // On Docker node1's container is compose's, adopted by Relevo (review B, finding 4): recovery must rebuild the
    // node inside it (its volume emptied, the container kept), as it rebuilds the others in containers of its own.
    let composed: ComposeNodeContainer | null = null;
    const volumeOf = (each: NodeRef): string =>
      each.name === "node1" && composed ? composed.volume : volumeName({ cluster: config.clusterName, node: each.name });

    beforeAll(async () => {
      const home = await tempHome("lost-disk");
      if (driver === "docker") {
        const repository = path.join(home, "repository");
        await mkdir(repository, { recursive: true });
        composed = await makeComposeNodeContainer(String(overrides.clusterName), "node1", { repository });
      }
      // No rejoin: node1 stays fenced, as an operator would find it after a failover.
      first = await startTestCluster("lost-disk", { autoRejoin: false, home, ...overrides });
      ({ config } = first);
      nodes = [...first.service.nodes];
      secrets = first.service.secrets;
      try {
        await fenceNode1ByAFailover();
      } finally {
        await first.stop();
      }
      for (const each of nodes) await loseDataDirectory(driver, volumeOf(each), first.service.driver, each);
    }, 240000);

    /** Rows on node1, a full backup, node1 killed and fenced by the failover to node2, more rows on node2 (in the archive's timeline 2 only). */
    async function fenceNode1ByAFailover(): Promise<void> {
      const { state } = failoverHelpers(first);
      await sql(node("node1"), "CREATE TABLE precious AS SELECT g AS id FROM generate_series(1, 300) g");
      await (
        await first.service.backups.start("full")
      ).done;
      await eventually(async () => ((await state()).eligible.includes("node2") ? true : undefined), { what: "node2 eligible" });
      // After the backup, on node1 (and, synchronously, node2). It also keeps
      // the failover's branch point off a segment boundary (the backup ends
      // with a segment switch): pg_receivewal cannot start exactly at a
      // timeline's switch point, a limit of the archiver left for another change.
      await sql(node("node1"), "INSERT INTO precious SELECT g FROM generate_series(301, 350) g");
      await first.service.driver.kill(node("node1"));
      await eventually(
        async () => {
          const current = await state();
          return current.primary === "node2" && current.fenced.includes("node1") && (await first.service.failover.operation()) === null
            ? true
            : undefined;
        },
        { what: "node2 promoted and node1 fenced", timeoutMs: 60000 },
      );
      // Written on node2 only, after the failover: in the archive's timeline 2, nowhere else.
      await sql(node("node2"), "INSERT INTO precious SELECT g FROM generate_series(351, 377) g");
      rows = 377;
      await archiverHasReceived(node("node2"), secrets, "the rows written after the failover");
    }

    afterAll(async () => {
      await again?.stop({ reason: "test finished" });
      await composed?.remove();
    });

    test("relevo up refuses to initialise a new cluster in place of the lost one, naming relevo restore --cluster, and creates nothing", async () => {
      const outcome = await startRelevo(loadConfig({}, { ...config }), quiet).then(
        async (service) => {
          await service.stop({ reason: "test finished" });
          return service.collector.latest;
        },
        (error: unknown) => error,
      );
      expect(outcome).toMatchObject({
        code: "PRECONDITION_FAILED",
        message: expect.stringMatching(/already had a cluster \(system identifier \d+ .*relevo restore --cluster.*relevo up --new-cluster/),
      });
      for (const each of nodes) expect(await first.service.driver.readFile(each, "PG_VERSION")).toBeNull();
    });

    // node2's data directory comes back holding files but no PG_VERSION (what relevo up refuses as DATA_DIR_NOT_OURS):
    // remains that may still be recovered by hand (review B, finding 5).
    test("remains that are no cluster are never deleted: refused while a server runs on them, named on Docker", async () => {
      const nodeDriver = first.service.driver;
      const node2 = node("node2");
      const refusal = async (): Promise<string> => {
        const refused = await run("node", [BIN, "restore", "--cluster"], { env: cliEnvFor(config) }).then(
          () => "",
          (error: { code: number; stderr: string }) => (error.code === 1 ? error.stderr : `exit ${error.code}: ${error.stderr}`),
        );
        return refused;
      };
      if (driver === "docker") {
        await inVolume(volumeOf(node2), ["sh", "-c", "mkdir /lost/base && echo kept > /lost/base/remains"]);
        expect(await refusal()).toContain(`node node2's volume ${volumeOf(node2)} holds files but no PG_VERSION`);
        expect((await nodeDriver.readFile(node2, "base/remains"))?.toString()).toBe("kept\n");
        await loseDataDirectory(driver, volumeOf(node2), nodeDriver, node2);
        return;
      }
      // A real server on node2's port whose PG_VERSION is then lost: the driver sees it by its pid file, and the
      // command refuses rather than take the node for lost (and its directory for remains).
      await nodeDriver.exec(node2, ["initdb", "-D", nodeDriver.dataDirectory(node2), "-U", "postgres", "-A", "trust", "--no-sync"], {
        mode: "offline",
      });
      const conf = (await nodeDriver.readFile(node2, "postgresql.conf"))!.toString();
      await nodeDriver.writeFile(node2, "postgresql.conf", `${conf}\nport = ${node2.port}\nlisten_addresses = '127.0.0.1'\n`);
      await nodeDriver.start(node2, { timeoutMs: 60000 });
      const data = nodeDriver.dataDirectory(node2);
      const elsewhere = `${path.dirname(data)}-elsewhere`;
      // Review 10, finding 7: a port is asked by a connection, as a client would, not by a bind test.
      const notPostgres = createServer((socket) => socket.end("SSH-2.0-OpenSSH_9.2\r\n"));
      try {
        await nodeDriver.removeFiles(node2, ["PG_VERSION"]);
        expect(await nodeDriver.state(node2)).toMatchObject({ phase: "running" });
        expect(await refusal()).toMatch(/node2 \(\S+: its server is running\) still exist/);
        // The running server's data directory moved away (the pid file with it): the driver sees nothing, the port
        // answers as PostgreSQL. node1's port is held by another program: neither lost nor surviving, said so.
        await rename(data, elsewhere);
        await new Promise<void>((resolve) => notPostgres.listen(node("node1").port, node("node1").host, resolve));
        const refused = await refusal();
        expect(refused).toMatch(/node2 \(\S+: a PostgreSQL server answers on its port\) still exist/);
        expect(refused).toMatch(/node1 \(port \d+ on \S+: something answers on its port, but not as PostgreSQL: .*\) cannot be told lost/);
      } finally {
        notPostgres.close();
        if (existsSync(elsewhere)) await rename(elsewhere, data);
        await nodeDriver.kill(node2);
      }
      expect(await nodeDriver.readFile(node2, "global/pg_control")).not.toBeNull();
    });

    test("relevo restore --cluster counts nodes without a data directory as lost, keeps remains that are no cluster, and rebuilds every row, those of the failover's timeline too", async () => {
      // Local: while troubleshooting, the operator kept a copy beside node1's (lost, emptied) data directory (review 10, finding 6).
      const operatorsCopy = path.join(config.home, "nodes", "node1", "data.broken");
      if (driver === "local") {
        await mkdir(operatorsCopy);
        await writeFile(path.join(operatorsCopy, "notes"), "kept by hand\n");
      }
      const recovered = await run("node", [BIN, "restore", "--cluster"], { env: cliEnvFor(config), timeout: 240000 });
      expect(recovered.stdout).toMatch(/node1: restored from the repository, primary\nnode2: seeded from/);
      if (driver === "local") {
        // node2's remains (a data directory without PG_VERSION) were moved aside, whole, and said so.
        const kept = /node2: its data directory held files but no PG_VERSION: kept, not deleted, in (\S+)/.exec(recovered.stdout)?.[1];
        expect(kept).toMatch(new RegExp(`^${path.join(config.home, "nodes", "node2")}\\.lost-\\d{8}T\\d{6}Z$`));
        expect(await readdir(path.join(kept!, "data", "global"))).toContain("pg_control");
        // node1's folder held more than Relevo's own: set aside too, the operator's copy in it, not deleted with the folder.
        const node1Kept = new RegExp(
          `node1: its storage held what Relevo did not put there \\(${operatorsCopy}\\): kept, not deleted, in (\\S+)`,
        );
        const keptNode1 = node1Kept.exec(recovered.stdout)?.[1];
        expect(keptNode1).toMatch(new RegExp(`^${path.join(config.home, "nodes", "node1")}\\.lost-\\d{8}T\\d{6}Z$`));
        expect(await readFile(path.join(keptNode1!, "data.broken", "notes"), "utf8")).toBe("kept by hand\n");
      }
      expect(await sql(node("node1"), "SELECT count(*)::int AS n, max(id) AS max FROM precious")).toEqual([{ n: rows, max: rows }]);
      // Docker: node1 was rebuilt in compose's container, still the one compose made.
      if (composed) expect((await first.service.driver.describe(node("node1"))).containerId).toBe(composed.id);
    }, 300000);

    test("relevo up then runs node1, fenced before the loss, as the primary: it takes writes, and the recorded state says so", async () => {
      again = await startRelevo(loadConfig({}, { ...config }), quiet);
      const service = again;
      await eventually(() => (service.collector.latest?.primary === "node1" ? true : undefined), { what: "node1 the primary" });
      await sql(node("node1"), "INSERT INTO precious VALUES (378)");
      expect(await sql(node("node1"), "SELECT count(*)::int AS n FROM precious")).toEqual([{ n: rows + 1 }]);
      expect(await service.failover.state()).toMatchObject({ primary: "node1", fenced: [] });
      expect(await service.failover.operation()).toBeNull();
    });

    test("WAL of another cluster in the archive: the archiver refuses the primary with an event and a health reason, not a silent loop", async () => {
      await again!.stop({ reason: "test finished" });
      again = null;
      // A segment of a timeline ahead of the primary's, of another system identifier: the newest in the repository's archive.
      const { objects, generation } = new Repository(config.repository, null, { spoolDir: walSpoolDir(config.home) });
      const newest = (await objects.list(archivePrefix(generation)))
        .map((info) => walFileNameOf(generation, info.key))
        .filter((name): name is string => name !== null && /^[0-9A-F]{24}$/.test(name))
        .sort()
        .pop()!;
      const foreign = await buffer(await objects.getStream(archiveKey(generation, newest)));
      foreign.writeBigUInt64LE(foreign.readBigUInt64LE(24) ^ 0xffffn, 24);
      const timeline = parseInt(newest.slice(0, 8), 16) + 5;
      await objects.putStream(
        archiveKey(generation, timeline.toString(16).toUpperCase().padStart(8, "0") + newest.slice(8)),
        Readable.from([foreign]),
      );

      again = await startRelevo(loadConfig({}, { ...config }), quiet);
      const service = again;
      const event = await eventually(
        async () => (await service.events.page({ first: 200 })).events.find((each) => (each.kind as string) === "archive:foreign-cluster"),
        { what: "archive:foreign-cluster", timeoutMs: 30000 },
      );
      expect(event).toMatchObject({ severity: "critical", node: "node1" });
      const reason = await eventually(() => service.collector.latest?.healthReasons.find((text) => text.includes("refuses node1")), {
        what: "the refusal among the health reasons",
      });
      expect(reason).toContain("relevo restore --cluster");
      expect(service.collector.latest?.health).toBe("degraded");
    });

    test("relevo up --new-cluster starts over: an empty cluster in the repository's generation 1 (g1/), the old backups and archive left where they were, unread", async () => {
      await again!.stop({ reason: "test finished" });
      again = null;
      for (const each of nodes) await loseDataDirectory(driver, volumeOf(each), first.service.driver, each);
      await recordOldClusterState(config, secrets);
      const before = await generationZero();
      expect(before.manifests).toHaveLength(1);
      expect(before.archive.length).toBeGreaterThan(0);
      const oldBackup = before.manifests[0]!.slice("manifests/".length);

      again = await startRelevo(loadConfig({}, { ...config }), quiet, { newCluster: true });
      const service = again;
      await eventually(() => (service.collector.latest?.primary === "node1" ? true : undefined), { what: "the new primary" });
      // Nothing recorded about the old cluster's nodes holds for the new one.
      expect(await service.failover.state()).toMatchObject({ primary: "node1", fenced: [], syncSet: [] });
      expect(await service.failover.operation()).toBeNull();
      await eventually(
        () => (service.collector.latest?.nodes.find((each) => each.name === "node2")?.role === "replica" ? true : undefined),
        {
          what: "node2, fenced in the old cluster, a replica of the new one",
        },
      );
      expect(await sql(node("node1"), "SELECT to_regclass('precious') IS NULL AS empty")).toEqual([{ empty: true }]);
      // The new generation's cluster recorded in it, once its primary was known (an older descriptor put back is told apart).
      expect(await readDescriptor()).toEqual({
        format: 1,
        generation: 1,
        systemIdentifier: await systemIdentifierOf(node("node1"), secrets),
      });
      expect(await service.backups.list()).toEqual([]);
      await expect(service.backups.get(oldBackup)).rejects.toMatchObject({ code: "NOT_FOUND" });
      // The new cluster's WAL is archived, under g1/: nothing of the old one is left to refuse it.
      await archiverHasReceived(node("node1"), secrets, "the new cluster's WAL");
      await eventually(async () => ((await objectKeys("g1/archive/")).length > 0 ? true : undefined), { what: "WAL pushed under g1/" });
      expect(service.collector.latest?.healthReasons.filter((text) => text.includes("WAL archive"))).toEqual([]);

      // A backup of the new cluster: its manifest and content under g1/, the only one listed; expiry leaves generation 0 alone.
      const taken = await (await service.backups.start("full")).done;
      expect(taken).toMatchObject({ status: "completed" });
      expect(await objectKeys("g1/manifests/")).toEqual([`g1/manifests/${taken.id}`]);
      expect((await objectKeys(`g1/backups/${taken.id}/`)).length).toBeGreaterThan(0);
      expect((await service.backups.list()).map((each) => each.id)).toEqual([taken.id]);
      await service.backups.expire();
      // Generation 0 untouched: its manifest, content and archive where they were; nothing moved in the repository
      // (no legacy wal/ there), the old cluster's spool kept beside the new one in the data home.
      expect(await generationZero()).toEqual(before);
      expect(await readdir(config.repository)).not.toContain("superseded");
      expect((await readdir(config.home)).filter((name) => name.startsWith("wal-spool.superseded-"))).toHaveLength(1);
      // The CLI opens the repository at its generation too: the old backup is not there to restore.
      const refused = await run(
        "node",
        [BIN, "restore", "--to", path.join(config.home, "old-copy"), "--port", String(await freePort()), "--backup", oldBackup],
        {
          env: cliEnvFor(config),
        },
      ).then(
        () => null,
        (error: { code: number; stderr: string }) => error,
      );
      expect(refused).toMatchObject({ code: 64, stderr: expect.stringContaining(`no backup with id ${oldBackup}`) });
    }, 300000);

    test("a second relevo up --new-cluster starts generation 2 (g2/), and generation 1 stays as it was", async () => {
      await again!.stop({ reason: "test finished" });
      again = null;
      const firstGeneration = { manifests: await objectKeys("g1/manifests/"), archive: await objectKeys("g1/archive/") };
      for (const each of nodes) await loseDataDirectory(driver, volumeOf(each), first.service.driver, each);
      again = await startRelevo(loadConfig({}, { ...config }), quiet, { newCluster: true });
      const service = again;
      await eventually(() => (service.collector.latest?.primary === "node1" ? true : undefined), { what: "the new primary" });
      expect(await readDescriptor()).toEqual({
        format: 1,
        generation: 2,
        systemIdentifier: await systemIdentifierOf(node("node1"), secrets),
      });
      expect(await service.backups.list()).toEqual([]);
      await archiverHasReceived(node("node1"), secrets, "the third cluster's WAL");
      await eventually(async () => ((await objectKeys("g2/archive/")).length > 0 ? true : undefined), { what: "WAL pushed under g2/" });
      expect({ manifests: await objectKeys("g1/manifests/"), archive: await objectKeys("g1/archive/") }).toEqual(firstGeneration);
    }, 300000);

    test("an unreadable repository.json refuses the start (REPOSITORY_CORRUPT), never taken for generation 0", async () => {
      await again!.stop({ reason: "test finished" });
      again = null;
      const file = path.join(config.repository, "repository.json");
      const stored = await readFile(file);
      // Plain JSON where Relevo keeps a checked object: what a hand edit leaves.
      await writeFile(file, JSON.stringify({ format: 1, generation: 0 }));
      try {
        const outcome = await startRelevo(loadConfig({}, { ...config }), quiet).then(
          async (service) => {
            await service.stop({ reason: "test finished" });
            return "started";
          },
          (error: unknown) => error,
        );
        expect(outcome).toMatchObject({ code: "REPOSITORY_CORRUPT", message: expect.stringContaining("repository.json") });
      } finally {
        await writeFile(file, stored);
      }
    });

    /** Generation 0's manifests, backups' content and archive, as keys. */
    async function generationZero(): Promise<{ manifests: string[]; backups: string[]; archive: string[] }> {
      return { manifests: await objectKeys("manifests/"), backups: await objectKeys("backups/"), archive: await objectKeys("archive/") };
    }

    async function objectKeys(prefix: string): Promise<string[]> {
      return (await new Repository(config.repository, null, { spoolDir: walSpoolDir(config.home) }).objects.list(prefix)).map(
        (info) => info.key,
      );
    }

    async function readDescriptor(): Promise<RepositoryDescriptor | null> {
      return (
        await openConfiguredRepository({
          settings: config.repositories[0]!,
          walOwner: null,
          spoolDir: walSpoolDir(config.home),
          create: false,
        })
      ).objects.readJson("repository.json");
    }
  },
);

/** The old cluster's recorded state as a failover left it: node2 fenced and in the sets, an operation journaled, a last LSN, an archive gap. */
/** The node's PostgreSQL system identifier, as text. */
async function systemIdentifierOf(node: NodeRef, secrets: Secrets): Promise<string> {
  return (await sqlOn<{ id: string }>(node, secrets, "SELECT system_identifier::text AS id FROM pg_control_system()"))[0]!.id;
}

/** A test cluster with a table `kept` of 1000 rows and a full backup of it; `sql` runs on its first node. */
async function clusterWithKeptRows(
  label: string,
  options: TestClusterOptions = {},
): Promise<TestCluster & { sql: <T = Record<string, unknown>>(text: string) => Promise<T[]> }> {
  const cluster = await startTestCluster(label, {}, options);
  const primary = cluster.service.nodes[0]!;
  const sql = <T = Record<string, unknown>>(text: string) => sqlOn<T>(primary, cluster.service.secrets, text);
  try {
    await sql("CREATE TABLE kept AS SELECT g AS id FROM generate_series(1, 1000) g");
    await (
      await cluster.service.backups.start("full")
    ).done;
  } catch (error) {
    await cluster.stop();
    throw error;
  }
  return { ...cluster, sql };
}

async function recordOldClusterState(config: RelevoConfig, secrets: Secrets): Promise<void> {
  await withClusterRedis(config, secrets, createLogger({ level: "silent" }), async (redis, keys) => {
    const store = new ClusterStateStore(redis, keys.clusterState);
    await store.update(null, (current) => ({ ...current!, fenced: ["node2"], syncSet: ["node2"], eligible: ["node2"] }));
    const entry = { id: "old", kind: "failover", trigger: "automatic", from: "node1", to: "node2", force: false, reason: "old cluster" };
    await redis.set(
      keys.operation.entry,
      JSON.stringify({ ...entry, stage: "promoting", startedAt: new Date().toISOString(), times: {}, facts: {} }),
    );
    await redis.set(keys.primaryLsn, "0/5000000");
    // A gap of the old cluster's archive, not yet behind a full backup: the new cluster's archive has none.
    const gap = { timeline: 1, from: "000000010000000000000003", to: "000000010000000000000003" };
    await redis.hset(keys.archiveGaps, `1:${gap.from}:${gap.to}`, JSON.stringify({ ...gap, cause: "", reportedAt: "", settled: false }));
  });
}

/** Waits until the WAL archiver has received (flushed) everything `primary` has written so far. */
async function archiverHasReceived(primary: NodeRef, secrets: Secrets, what: string): Promise<void> {
  const { lsn } = (await sqlOn<{ lsn: string }>(primary, secrets, "SELECT pg_current_wal_lsn()::text AS lsn"))[0]!;
  const query = `SELECT flush_lsn >= '${lsn}' AS ok FROM pg_stat_replication WHERE application_name = 'relevo_archiver'`;
  await eventually(async () => ((await sqlOn<{ ok: boolean }>(primary, secrets, query))[0]?.ok ? true : undefined), {
    what: `the archiver to have received ${what}`,
    // After a failover the archiver waits for the topology to name the new
    // primary, then for its retry delay (up to 5 s), before it streams again.
    timeoutMs: 60000,
  });
}

/** The disk is gone: local, the node's data directory (its folder and server log stay); Docker, its volume's content (the container stays). */
async function loseDataDirectory(driver: TestDriver, volume: string, nodeDriver: NodeDriver, node: NodeRef): Promise<void> {
  if (driver === "local") {
    await rm(nodeDriver.dataDirectory(node), { recursive: true, force: true });
    return;
  }
  await inVolume(volume, ["find", "/lost", "-mindepth", "1", "-delete"]);
}

/** Runs a command as root in a one-off container with the volume at /lost (what an operator's hand, or a disk, does to it). */
async function inVolume(volume: string, [command, ...args]: string[]): Promise<void> {
  await run("docker", ["run", "--rm", "--user", "0", "-v", `${volume}:/lost`, "--entrypoint", command!, TEST_IMAGE, ...args]);
}
