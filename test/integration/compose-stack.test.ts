import Docker from "dockerode";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { parse } from "yaml";
import { createLogger } from "../../src/log";
import { ensureRedisServer, type RedisServerHandle } from "../../src/redis/redis-server";
import { projectRoot } from "../../src/util/project-root";
import { requireDockerEngine, TEST_IMAGE } from "../helpers/docker";
import { failoverHelpers } from "../helpers/failover";
import { freePort } from "../helpers/ports";
import { eventually, startTestCluster, type TestCluster } from "../helpers/service";
import { tempHome } from "../helpers/home";
import { testRedisTls } from "../helpers/tls";
import { demultiplexBuffer } from "../../src/nodes/docker/docker-exec";

const docker = new Docker({ socketPath: "/var/run/docker.sock" });

interface ComposeService {
  image?: string;
  user?: string;
  entrypoint?: string[];
  labels?: Record<string, string>;
  volumes?: string[];
  restart?: string;
  stop_signal?: string;
  environment?: Record<string, string>;
  network_mode?: string;
}

interface ComposeFile {
  services: Record<string, ComposeService>;
  volumes: Record<string, { name?: string } | null>;
}

/**
 * The compose stack's node services, as `docker compose up` makes them, from
 * docker-compose.yml itself: its entrypoint, user, labels, volumes and
 * restart policy, with the test image, the test's cluster name in labels and
 * volume names, and the repository volume mounted where this Relevo keeps it
 * (Relevo runs on this machine here, not in its own container). Redis is
 * this machine's redis-server with a password and append-only persistence,
 * as the stack's; Relevo gets the stack's environment for the relevo service.
 */
describe("the docker-compose stack: its node containers adopted, external Redis, the repository as a volume", () => {
  let compose: ComposeFile;
  const cluster = `cmp-${Date.now().toString(36).slice(-5)}`;
  const made: Record<string, string> = {};
  let redis: RedisServerHandle;
  let stack: TestCluster;
  let repositoryVolume: string;

  beforeAll(async () => {
    await requireDockerEngine();
    compose = parse(await readFile(path.join(projectRoot(), "docker-compose.yml"), "utf8"), { merge: true }) as ComposeFile;
    const home = await tempHome("compose");
    const repository = path.join(home, "repository");
    await mkdir(repository, { recursive: true, mode: 0o711 });
    // The stack's named repository volume, backed here by this machine's directory that Relevo uses.
    repositoryVolume = `relevo-${cluster}-repository`;
    await docker.createVolume({
      Name: repositoryVolume,
      DriverOpts: { type: "none", device: repository, o: "bind" },
      Labels: { "io.relevo.home": home },
    });
    const rename = (name: string) => name.replace(/^relevo-relevo-/, `relevo-${cluster}-`).replace(/^relevo-repository$/, repositoryVolume);
    // Compose makes the named volumes first (labelled here so that the test environment removes them).
    for (const volume of Object.values(compose.volumes)) {
      if (volume?.name?.startsWith("relevo-relevo-"))
        await docker.createVolume({ Name: rename(volume.name), Labels: { "io.relevo.home": home } });
    }
    for (const [service, definition] of Object.entries(compose.services)) {
      if (definition.labels?.["io.relevo.role"] !== "node") continue;
      const mounts = (definition.volumes ?? []).map((entry) => {
        const [source, target, flags] = entry.split(":") as [string, string, string?];
        const volume = compose.volumes[source]?.name ?? source;
        return {
          Type: "volume" as const,
          Source: rename(volume),
          Target: target === "/var/lib/relevo-repository" ? repository : target,
          ReadOnly: flags === "ro",
        };
      });
      const container = await docker.createContainer({
        name: `${cluster}-${service}-1`,
        Image: TEST_IMAGE,
        User: definition.user,
        Entrypoint: definition.entrypoint!.map((part) => part.replace(/\$\$/g, "$")),
        // Not labelled with the test's home: made by "compose", not by Relevo (removed by this file's afterAll).
        Labels: { ...definition.labels, "io.relevo.cluster": cluster },
        StopSignal: definition.stop_signal,
        HostConfig: { NetworkMode: definition.network_mode, RestartPolicy: { Name: definition.restart ?? "no" }, Mounts: mounts },
      });
      made[definition.labels["io.relevo.node"]!] = container.id;
      await container.start();
    }
    const redisPort = await freePort();
    const redisHome = await tempHome("compose-redis");
    const redisTls = await testRedisTls();
    redis = await ensureRedisServer({
      home: redisHome,
      host: "127.0.0.1",
      port: redisPort,
      password: "compose-redis-password",
      bin: "redis-server",
      startTimeoutMs: 30000,
      logger: createLogger({ level: "silent" }),
      tls: redisTls,
    });
    // Reached as an external Redis over TLS (rediss://, its CA and a client certificate in files), as an operator's own.
    const tlsFile = async (name: string, content: string | undefined): Promise<string> => {
      const file = path.join(redisHome, name);
      await writeFile(file, content ?? "", { mode: 0o600 });
      return file;
    };
    const environment = compose.services.relevo!.environment!;
    expect(environment).toMatchObject({ RELEVO_DRIVER: "docker" });
    stack = await startTestCluster("compose", {
      home,
      driver: "docker",
      dockerImage: TEST_IMAGE,
      clusterName: cluster,
      repository,
      redisUrl: `rediss://:compose-redis-password@127.0.0.1:${redisPort}`,
      redisCaFile: await tlsFile("external-ca.crt", redisTls.client.ca),
      redisCertFile: await tlsFile("external-client.crt", redisTls.client.cert),
      redisKeyFile: await tlsFile("external-client.key", redisTls.client.key),
      leaseTtlMs: 2000,
    });
  });

  afterAll(async () => {
    await stack?.stop();
    await redis?.stop();
    for (const id of Object.values(made))
      await docker
        .getContainer(id)
        .remove({ force: true, v: true })
        .catch(() => undefined);
  });

  test("before Relevo, the node containers have nothing to run and say so; Relevo adopts them (same ids, no restart policy) and the replica streams", async () => {
    for (const id of Object.values(made)) {
      const logs = demultiplexBuffer(await docker.getContainer(id).logs({ stdout: true, stderr: true }));
      expect(logs).toContain("waiting for Relevo to initialise this node");
    }
    for (const [name, id] of Object.entries(made)) {
      const view = await stack.service.driver.describe(stack.service.nodes.find((n) => n.name === name)!);
      expect(view.containerId).toBe(id);
      expect(view.container).toMatchObject({ status: "running", image: TEST_IMAGE });
    }
    const { node, streamingFrom } = failoverHelpers(stack);
    await eventually(async () => ((await streamingFrom(node("node2")).catch(() => null)) === node("node1").port ? true : undefined), {
      what: "node2 streaming",
    });
  });

  test("Redis is the stack's (not started by Relevo), the WAL archive fills the repository volume, and a backup's restore test replays from it", async () => {
    const { node, sql } = failoverHelpers(stack);
    await sql(node("node1"), "CREATE TABLE compose_check AS SELECT generate_series(1, 10000) AS id");
    const { done } = await stack.service.backups.start("full");
    const backup = await done;
    const verified = await stack.service.backups.verify(backup.id, { restoreTest: true });
    expect(verified.verification).toMatchObject({ contentOk: true, restoreTest: { ok: true, error: null } });
    // Relevo ran no Redis of its own.
    expect(existsSync(path.join(stack.config.home, "redis"))).toBe(false);
    // The archive is Relevo's; no node container mounts it: the restore test's copy was fed its WAL through the driver.
    expect((await stack.service.repository.archive.names()).some((name) => /^[0-9A-F]{24}$/.test(name))).toBe(true);
    expect(await readdir(stack.config.repository)).not.toContain("wal");
    const copyMounts = (await docker.listContainers({ all: true, filters: { label: [`io.relevo.cluster=${cluster}`] } })).flatMap((c) =>
      c.Mounts.map((m) => m.Name),
    );
    expect(copyMounts).not.toContain(repositoryVolume);
  });

  test("`docker compose up` again after Relevo stopped (its tools containers gone, the node containers started by the engine, not Relevo) runs the same nodes; Relevo finds them running", async () => {
    await stack.service.stop({ reason: "compose restart", keepRedis: true });
    // Stopping its nodes, Relevo leaves nothing of its own holding their volumes (`docker compose down -v` removes them).
    const tools = await docker.listContainers({
      all: true,
      filters: { label: [`io.relevo.cluster=${stack.config.clusterName}`, "io.relevo.role=tools"] },
    });
    expect(tools.map((info) => info.Names)).toEqual([]);
    for (const id of Object.values(made)) {
      const info = await docker.getContainer(id).inspect();
      if (!info.State.Running) await docker.getContainer(id).start();
    }
    stack = await startTestCluster("compose", { ...stack.config, redisUrl: stack.config.redisUrl, leaseTtlMs: 2000 });
    for (const [name, id] of Object.entries(made)) {
      expect((await stack.service.driver.describe(stack.service.nodes.find((n) => n.name === name)!)).containerId).toBe(id);
    }
    const { node, sql } = failoverHelpers(stack);
    expect((await sql<{ n: string }>(node("node1"), "SELECT count(*)::text AS n FROM compose_check"))[0]!.n).toBe("10000");
  });

  test("removing the adopted replica stops its container and empties its volume, but leaves the container (it is compose's): started again, it waits to be initialised", async () => {
    await stack.service.failover.removeReplica("node2");
    const replica = docker.getContainer(made.node2!);
    expect((await replica.inspect()).State.Running).toBe(false);
    const since = Math.floor(Date.now() / 1000);
    await replica.start();
    await eventually(async () => (!(await replica.inspect()).State.Running ? true : undefined), {
      what: "the emptied replica's container to exit",
    });
    const logs = demultiplexBuffer(await replica.logs({ stdout: true, stderr: true, since }));
    expect(logs).toContain("waiting for Relevo to initialise this node");
  });
});
