import { expect } from "@jest/globals";
import Docker from "dockerode";
import { ErrorCode } from "../../src/errors";
import { createLogger } from "../../src/log";
import { DockerDriver } from "../../src/nodes/docker/docker-driver";
import { startRelevo } from "../../src/service";
import { chown, lstat, mkdir, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { createNodeDriver, usingDriver } from "../../src/nodes/create-driver";
import { trustOnlyTlsSource } from "../../src/tls/node-tls";
import { dockerOverrides, makeComposeNodeContainer, removeDockerObjectsOf, requireDockerEngine, TEST_IMAGE } from "../helpers/docker";
import { failoverHelpers } from "../helpers/failover";
import { processesMentioning } from "../helpers/processes";
import { eventually, testConfig, useTestCluster } from "../helpers/service";
import { startLibpqWriter } from "../helpers/libpq-writer";

const silent = createLogger({ level: "silent" });
const docker = new Docker({ socketPath: "/var/run/docker.sock" });

beforeAll(requireDockerEngine);

describe("Docker start-up errors: a clear code, a message naming the fix, nothing left running", () => {
  test("the engine does not answer: DOCKER_UNAVAILABLE names RELEVO_DOCKER_HOST", async () => {
    const config = await testConfig("docker-down", { ...dockerOverrides("down"), dockerHost: "unix:///tmp/relevo-no-engine.sock" });
    await expect(startRelevo(config, silent)).rejects.toMatchObject({
      code: ErrorCode.DockerUnavailable,
      message: expect.stringContaining("RELEVO_DOCKER_HOST"),
    });
    expect(await processesMentioning(config.home)).toEqual([]);
  });

  test("the image is not on the engine: IMAGE_MISSING names it and how to get it; nothing is pulled", async () => {
    const config = await testConfig("docker-image", { ...dockerOverrides("image"), dockerImage: "relevo-test/absent:1" });
    await expect(startRelevo(config, silent)).rejects.toMatchObject({
      code: ErrorCode.ImageMissing,
      message: expect.stringMatching(/relevo-test\/absent:1.*docker pull/),
    });
    expect(await processesMentioning(config.home)).toEqual([]);
  });

  test("a container that is not Relevo's holds a node's name: CONTAINER_CONFLICT, and it is left alone", async () => {
    const config = await testConfig("docker-clash", dockerOverrides("clash"));
    const name = DockerDriver.namesOf(config.clusterName, "node1").container;
    const stranger = await docker.createContainer({
      name,
      Image: TEST_IMAGE,
      Entrypoint: ["sleep", "infinity"],
      Cmd: [],
      Labels: { "io.relevo.home": config.home },
    });
    try {
      await expect(startRelevo(config, silent)).rejects.toMatchObject({
        code: ErrorCode.ContainerConflict,
        message: expect.stringContaining(name),
      });
      expect((await stranger.inspect()).Name).toBe(`/${name}`);
      expect(await processesMentioning(config.home)).toEqual([]);
    } finally {
      await stranger.remove({ force: true, v: true });
    }
  });

  test("containers left by a data home that no longer exists: relevo up refuses them with CONTAINER_CONFLICT naming that home", async () => {
    const overrides = dockerOverrides("gone-home");
    const gone = await testConfig("docker-gone-home", overrides);
    const node1 = { name: "node1", host: gone.host, port: gone.primaryPort };
    // The old home's node container (and tools container) bind-mount its repository, as the service makes them.
    await mkdir(gone.repository, { recursive: true });
    await usingDriver(createNodeDriver(gone, { tls: trustOnlyTlsSource("") }), (driver) => driver.provision(node1));
    await rm(gone.home, { recursive: true, force: true });
    const config = await testConfig("docker-new-home", overrides); // same cluster name, another home
    try {
      await expect(startRelevo(config, silent)).rejects.toMatchObject({
        code: ErrorCode.ContainerConflict,
        message: expect.stringMatching(new RegExp(`made by the Relevo data home ${gone.home}, which no longer exists.*docker rm -f`)),
      });
      expect(await processesMentioning(config.home)).toEqual([]);
      // Left alone: the operator decides what becomes of it.
      const name = DockerDriver.namesOf(config.clusterName, "node1").container;
      expect((await docker.getContainer(name).inspect()).Config.Labels["io.relevo.home"]).toBe(gone.home);
    } finally {
      await removeDockerObjectsOf([gone.home, config.home]);
    }
  });
});

describe("Docker: a restored copy's bind-mounted data directory", () => {
  test("destroy removes it from the host, root's entries too; a link in it is removed, never followed", async () => {
    const config = await testConfig("docker-copy-rm", dockerOverrides("copyrm"));
    const place = path.join(config.home, "copy");
    const data = path.join(place, "data");
    const victim = path.join(config.home, "root-only");
    await mkdir(victim, { mode: 0o700 });
    await writeFile(path.join(victim, "precious"), "root's");
    // As the container's user leaves it (the image's postgres), with a directory root made (base/1) and links planted in it.
    await mkdir(path.join(data, "base", "1"), { recursive: true, mode: 0o700 });
    await writeFile(path.join(data, "base", "1", "1259"), "block");
    await mkdir(path.join(data, "pg_replslot"), { mode: 0o700 });
    await symlink(victim, path.join(data, "pg_replslot", "slot1"));
    await symlink(path.join(victim, "precious"), path.join(data, "standby.signal"));
    const owner = { uid: 101, gid: 104 };
    for (const dir of [data, path.join(data, "base"), path.join(data, "pg_replslot")]) await chown(dir, owner.uid, owner.gid);
    await usingDriver(createNodeDriver(config, { tls: trustOnlyTlsSource(""), directories: { copy: place } }), (driver) =>
      driver.destroy({ name: "copy", host: "127.0.0.1", port: 1 }),
    );
    await expect(lstat(data)).rejects.toMatchObject({ code: "ENOENT" });
    expect(await readdir(place)).toEqual([]);
    expect(await readdir(victim)).toEqual(["precious"]);
    expect(await readFile(path.join(victim, "precious"), "utf8")).toBe("root's");
  });
});

describe("Docker: adopted containers, containers removed behind Relevo's back, a paused primary", () => {
  const overrides = dockerOverrides("faults");
  let adoptedId = "";

  // What docker compose makes: a node container with Relevo's labels, a
  // volume of its own and a restart policy, before Relevo ever runs.
  beforeAll(async () => {
    adoptedId = (await makeComposeNodeContainer(String(overrides.clusterName), "node1")).id;
  });

  afterAll(async () => {
    // Every container on the adopted volume (Relevo's tools container too) goes before the volume.
    for (const container of await docker.listContainers({
      all: true,
      filters: { label: [`io.relevo.cluster=${overrides.clusterName}`] },
    })) {
      await docker
        .getContainer(container.Id)
        .remove({ force: true, v: true })
        .catch(() => undefined);
    }
    await docker
      .getVolume(`${String(overrides.clusterName)}-compose-node1`)
      .remove({ force: true })
      .catch(() => undefined);
  });

  const cluster = useTestCluster("docker-faults", { ...overrides, leaseTtlMs: 2000 });
  const { node, sql, state, events, streamingFrom } = failoverHelpers(cluster);

  test("a container carrying a node's labels is adopted, not recreated: same id, its volume, no restart policy", async () => {
    const view = await cluster.service.driver.describe(node("node1"));
    expect(view.containerId).toBe(adoptedId);
    const inspected = await docker.getContainer(adoptedId).inspect();
    expect(inspected.HostConfig.RestartPolicy?.Name).toBe("no");
    expect(inspected.State.Running).toBe(true);
    await sql(node("node1"), "CREATE TABLE acked (id int PRIMARY KEY)");
    await eventually(async () => ((await streamingFrom(node("node2")).catch(() => null)) === node("node1").port ? true : undefined), {
      what: "node2 streaming",
    });
  });

  test("the replica's container removed behind Relevo's back: the topology shows it gone, then it is made again on its volume and streams", async () => {
    const before = (await cluster.service.driver.describe(node("node2"))).containerId!;
    await cluster.service.failover.setMaintenance(true);
    try {
      await docker.getContainer(before).remove({ force: true });
      const seen = await eventually(
        () => {
          const snapshot = cluster.service.collector.latest;
          const replica = snapshot?.nodes.find((n) => n.name === "node2");
          return replica && !replica.reachable && replica.driver.container === null ? replica : undefined;
        },
        { what: "node2 shown without a container" },
      );
      expect(seen.driver.state).toBe("stopped"); // its volume, and so its data, remain
    } finally {
      await cluster.service.failover.setMaintenance(false);
    }
    expect(await cluster.service.failover.rejoin("node2")).toBe("restart");
    const after = (await cluster.service.driver.describe(node("node2"))).containerId!;
    expect(after).not.toBe(before);
    await sql(node("node1"), "INSERT INTO acked (id) VALUES (1)");
    await eventually(async () => ((await sql(node("node2"), "SELECT 1 FROM acked WHERE id = 1")).length === 1 ? true : undefined), {
      what: "replicated to the new container",
    });
  });

  test("docker pause of the primary (a hung server): node2 takes over, node1 is killed and takes no write, then rejoins", async () => {
    await eventually(async () => ((await state()).eligible.includes("node2") ? true : undefined), { what: "node2 eligible" });
    const since = Date.now();
    await cluster.service.driver.pause(node("node1"));
    await eventually(
      async () => ((await state()).primary === "node2" && (await cluster.service.failover.operation()) === null ? true : undefined),
      {
        what: "node2 promoted",
        timeoutMs: 60000,
      },
    );
    const fenced = await events("node:fenced", since);
    expect(fenced.map((e) => e.node)).toContain("node1");
    const writer = startLibpqWriter(cluster.service);
    await eventually(() => (writer.acknowledgedSoFar() > 10 ? true : undefined), { what: "writes" });
    const report = await writer.stop();
    const present = new Set((await sql<{ id: number }>(node("node2"), "SELECT id FROM acked")).map((r) => r.id));
    expect(report.acknowledged.filter((id) => !present.has(id))).toEqual([]);
    await eventually(
      async () =>
        (await streamingFrom(node("node1")).catch(() => null)) === node("node2").port && !(await state()).fenced.includes("node1")
          ? true
          : undefined,
      { what: "node1 rejoined, following node2", timeoutMs: 90000 },
    );
    // Still the adopted container: Relevo restarted it, the engine did not.
    expect((await cluster.service.driver.describe(node("node1"))).containerId).toBe(adoptedId);
  });

  test("a replica whose container and volume are both gone: its rejoin fails with NODE_MISSING, node:rejoin-failed, nothing made again", async () => {
    const primary = (await state()).primary;
    const lost = primary === "node1" ? "node2" : "node1";
    const since = Date.now();
    const labels = [`io.relevo.cluster=${overrides.clusterName}`, `io.relevo.node=${lost}`];
    const containers = await docker.listContainers({ all: true, filters: { label: labels } });
    const inspected = await docker.getContainer((await cluster.service.driver.describe(node(lost))).containerId!).inspect();
    const volume = inspected.Mounts.find((mount) => mount.Destination === "/var/lib/postgresql/data")!.Name!;
    for (const container of containers) await docker.getContainer(container.Id).remove({ force: true });
    await docker.getVolume(volume).remove();
    expect((await cluster.service.driver.state(node(lost))).phase).toBe("absent");

    const refused = await cluster.service.failover.rejoin(lost).then(
      () => null,
      (error: { code?: string }) => error,
    );
    expect(refused?.code).toBe(ErrorCode.NodeMissing);
    expect((await events("node:rejoin-failed", since)).map((e) => e.node)).toEqual([lost]);
    // Nothing half-done: no operation left, the primary as it was, and no container or volume made for the lost node.
    expect(await cluster.service.failover.operation()).toBeNull();
    expect((await state()).primary).toBe(primary);
    expect(await docker.listContainers({ all: true, filters: { label: labels } })).toEqual([]);
    expect((await docker.listVolumes({ filters: { label: labels } })).Volumes ?? []).toEqual([]);
  });
});

describe("Docker: a fenced primary's container started by hand (no automatic rejoin)", () => {
  const cluster = useTestCluster("docker-fenced", { ...dockerOverrides("fenced"), leaseTtlMs: 2000, autoRejoin: "false" });
  const { node, sql, state, events, primaryNow } = failoverHelpers(cluster);

  test("docker start of the fenced old primary: it comes up read-only, takes no write, and is fenced again", async () => {
    await sql(node("node1"), "CREATE TABLE acked (id int PRIMARY KEY)");
    await eventually(async () => ((await state()).eligible.includes("node2") ? true : undefined), { what: "node2 eligible" });
    await cluster.service.driver.kill(node("node1"));
    await eventually(async () => ((await primaryNow()) === "node2" ? true : undefined), { what: "node2 promoted", timeoutMs: 60000 });
    const container = (await cluster.service.driver.describe(node("node1"))).containerId!;
    // The engine restarts nothing by itself (no restart policy)…
    await new Promise((resolve) => setTimeout(resolve, 3000));
    expect((await docker.getContainer(container).inspect()).State.Running).toBe(false);
    // …and an operator's `docker start` while no Relevo watches (the monitor stopped, as with the service
    // down) brings back a server that only its fence keeps from writing: it must refuse, on node1 itself.
    await cluster.service.failover.stop();
    let refused: string;
    let since: number;
    try {
      await docker.getContainer(container).start();
      refused = await eventually(
        async () =>
          sql(node("node1"), "INSERT INTO acked (id) VALUES (42)").then(
            () => "accepted",
            (error: Error) => (/read-only/.test(error.message) ? error.message : undefined),
          ),
        { what: "node1 answering the write", timeoutMs: 30000 },
      );
      expect(await sql(node("node1"), "SELECT id FROM acked WHERE id = 42")).toEqual([]);
    } finally {
      since = Date.now();
      cluster.service.failover.start();
    }
    expect(refused).toMatch(/read-only transaction/);
    // The monitor back: node1 is a second primary, fenced again at once.
    await eventually(async () => (!(await docker.getContainer(container).inspect()).State.Running ? true : undefined), {
      what: "node1 fenced again",
      timeoutMs: 30000,
    });
    expect((await events("cluster:split-brain", since)).map((e) => e.node)).toContain("node1");
    expect((await sql<{ id: number }>(node("node2"), "SELECT id FROM acked WHERE id = 42")).length).toBe(0);
  });
});
