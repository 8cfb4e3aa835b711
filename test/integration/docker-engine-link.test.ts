import { expect } from "@jest/globals";
import Docker from "dockerode";
import path from "node:path";
import { ErrorCode } from "../../src/errors";
import { createLogger } from "../../src/log";
import { startRelevo } from "../../src/service";
import { labelFilter } from "../../src/nodes/docker/container-spec";
import { backupContentPrefix } from "../../src/repository/repository-layout";
import { dockerOverrides, requireDockerEngine } from "../helpers/docker";
import { makeTlsMaterial, startEngineForwarder, type EngineForwarder, type TlsMaterial } from "../helpers/engine-forwarder";
import { failoverHelpers } from "../helpers/failover";
import { graphqlRequest } from "../helpers/graphql-client";
import { startLibpqWriter } from "../helpers/libpq-writer";
import { processesMentioning } from "../helpers/processes";
import { eventually, startTestCluster, testConfig, type TestCluster } from "../helpers/service";
import { sleep } from "../../src/util/sleep";

const silent = createLogger({ level: "silent" });
/** The engine's own socket: what the tests do behind Relevo's back. */
const docker = new Docker({ socketPath: "/var/run/docker.sock" });

const NODES_QUERY = `{ cluster { health nodes { name role reachable driver { state error container { id status } } } } }`;
type NodesData = {
  cluster: {
    health: string;
    nodes: Array<{
      name: string;
      role: string;
      reachable: boolean;
      driver: { state: string; error: string | null; container: { id: string; status: string } | null };
    }>;
  };
};

/** The topology as an operator's tooling reads it, once `seen` holds. */
function topologyOnce(cluster: TestCluster, seen: (data: NodesData["cluster"]) => boolean, what: string): Promise<NodesData> {
  return eventually(
    async () => {
      const response = await graphqlRequest<NodesData>(cluster.url, NODES_QUERY, { token: cluster.token("viewer") });
      return response.data && seen(response.data.cluster) ? response.data : undefined;
    },
    { what },
  );
}

/**
 * The link between Relevo and the Docker engine: a TLS endpoint with client
 * certificates (as `dockerd --tlsverify` serves it), and the engine going
 * away while the cluster runs. The endpoint forwards to this machine's
 * engine, so the containers are real and keep running when it is cut.
 */
describe("Docker engine over TLS, and gone while the cluster runs", () => {
  let tls: TlsMaterial;
  let endpoint: EngineForwarder;
  let cluster: TestCluster | undefined;

  beforeAll(async () => {
    await requireDockerEngine();
    tls = await makeTlsMaterial();
    endpoint = await startEngineForwarder({ tls });
  });

  afterAll(async () => {
    await endpoint?.restore().catch(() => undefined); // the cluster's containers are removed through it
    await cluster?.stop();
    await endpoint?.close();
    await tls?.remove();
  });

  test("client certificates the engine does not trust: DOCKER_UNAVAILABLE naming RELEVO_DOCKER_CERT_PATH, nothing started", async () => {
    const config = await testConfig("docker-tls-stranger", {
      ...dockerOverrides("tls-stranger"),
      dockerHost: endpoint.host,
      dockerCertPath: tls.strangerCertPath,
    });
    await expect(startRelevo(config, silent)).rejects.toMatchObject({
      code: ErrorCode.DockerUnavailable,
      message: expect.stringMatching(/TLS.*RELEVO_DOCKER_CERT_PATH/), // the engine resets a client it does not trust
    });
    expect(await processesMentioning(config.home)).toEqual([]);
  });

  test("a certificate directory without the certificates: INVALID_CONFIG naming the missing file", async () => {
    const config = await testConfig("docker-tls-empty", {
      ...dockerOverrides("tls-empty"),
      dockerHost: endpoint.host,
      dockerCertPath: path.join(tls.clientCertPath, "absent"),
    });
    await expect(startRelevo(config, silent)).rejects.toMatchObject({
      code: ErrorCode.InvalidConfig,
      message: expect.stringMatching(/RELEVO_DOCKER_CERT_PATH.*ca\.pem/),
    });
  });

  test("with its client certificates Relevo builds the cluster through the TLS endpoint: containers in the topology, the replica streams", async () => {
    cluster = await startTestCluster("docker-tls", {
      ...dockerOverrides("tls"),
      dockerHost: endpoint.host,
      dockerCertPath: tls.clientCertPath,
      leaseTtlMs: 2000,
    });
    const { node, sql } = failoverHelpers(cluster);
    const answer = await topologyOnce(cluster, (seen) => seen.health === "HEALTHY", "a healthy cluster");
    for (const seen of answer.cluster.nodes) {
      expect(seen).toMatchObject({
        reachable: true,
        driver: { state: "RUNNING", error: null, container: { id: expect.stringMatching(/^[0-9a-f]{64}$/), status: "running" } },
      });
    }
    await sql(node("node1"), "CREATE TABLE acked (id int PRIMARY KEY)");
    await eventually(
      async () => ((await sql(node("node2"), "SELECT 1 FROM pg_tables WHERE tablename = 'acked'")).length === 1 ? true : undefined),
      { what: "replicated" },
    );
  });

  test("the engine goes away: nodes shown UNKNOWN with the reason, PostgreSQL keeps serving, no failover; a backup fails cleanly; all resumes when it is back", async () => {
    const running = cluster!;
    const { node, sql, state, events } = failoverHelpers(running);
    const before = await state();
    const since = Date.now();
    const writer = startLibpqWriter(running.service);
    await eventually(() => (writer.acknowledgedSoFar() > 5 ? true : undefined), { what: "writes" });

    await endpoint.cut();
    const outage = await topologyOnce(running, (seen) => seen.nodes.every((n) => n.driver.state === "UNKNOWN"), "nodes shown UNKNOWN");
    for (const seen of outage.cluster.nodes) {
      expect(seen).toMatchObject({
        reachable: true,
        driver: { container: null, error: expect.stringMatching(/Docker engine .* does not answer/) },
      });
    }
    expect(outage.cluster.nodes.map((n) => [n.name, n.role])).toEqual([
      ["node1", "PRIMARY"],
      ["node2", "REPLICA"],
    ]);

    // A backup needs the node's files, which only the engine can give: a clear code, a failed record, no content left.
    const { manifest, done } = await running.service.backups.start("full");
    await expect(done).rejects.toMatchObject({ code: ErrorCode.DockerUnavailable });
    expect(await running.service.backups.get(manifest.id)).toMatchObject({ status: "failed", files: [] });
    const repository = running.service.repository;
    expect(await repository.objects.list(backupContentPrefix(repository.generation, manifest.id))).toEqual([]);

    // Several detection windows without the engine: the primary answers, so nothing is failed over or fenced.
    await sleep(3 * running.config.failoverCheckIntervalMs * running.config.failoverFailureThreshold + 4000);
    const during = await state();
    expect({ primary: during.primary, epoch: during.epoch, fenced: during.fenced }).toEqual({
      primary: before.primary,
      epoch: before.epoch,
      fenced: [],
    });
    expect([...(await events("failover:detected", since)), ...(await events("node:fenced", since))]).toEqual([]);

    await endpoint.restore();
    const back = await topologyOnce(
      running,
      (seen) => seen.nodes.every((n) => n.driver.state === "RUNNING" && n.driver.error === null),
      "nodes RUNNING again",
    );
    expect(back.cluster.nodes.every((n) => n.driver.container?.status === "running")).toBe(true);
    const report = await writer.stop();
    const present = new Set((await sql<{ id: number }>(node("node1"), "SELECT id FROM acked")).map((r) => r.id));
    expect(report.acknowledged.filter((id) => !present.has(id))).toEqual([]);
    expect(report.acknowledged.length).toBeGreaterThan(20);

    // The driver's long-lived file agents died with their connections: a backup after the outage opens new ones.
    const after = await running.service.backups.start("full");
    expect(await after.done).toMatchObject({ status: "completed" });
  });

  test("the primary dies while the engine is gone: no promotion over a primary that cannot be fenced; failed over once the engine answers, nothing acknowledged lost", async () => {
    const running = cluster!;
    const { node, sql, state, events, primaryNow } = failoverHelpers(running);
    await eventually(async () => ((await state()).eligible.includes("node2") ? true : undefined), { what: "node2 eligible" });
    await sql(node("node1"), "CREATE TABLE acked_again (id int PRIMARY KEY)"); // the writer's ids start at 1 again
    const writer = startLibpqWriter(running.service, "acked_again");
    await eventually(() => (writer.acknowledgedSoFar() > 5 ? true : undefined), { what: "writes" });
    const since = Date.now();
    await endpoint.cut();
    // The crash happens where Relevo cannot see it: through the engine's own socket.
    const [primaryContainer] = await docker.listContainers({
      filters: labelFilter({ cluster: running.config.clusterName, node: "node1" }, "node"),
    });
    await docker.getContainer(primaryContainer!.Id).kill();
    const refused = await eventually(async () => (await events("failover:failed", since))[0], {
      what: "a failover that could not fence",
      timeoutMs: 60000,
    });
    expect(refused.message).toMatch(/Docker engine .* does not answer/);
    expect((await state()).primary).toBe("node1");
    expect((await sql<{ in_recovery: boolean }>(node("node2"), "SELECT pg_is_in_recovery() AS in_recovery"))[0]!.in_recovery).toBe(true);

    // Retried as soon as the engine answers, not after the 30 s hold-off of a failed automatic failover.
    await endpoint.restore();
    await eventually(async () => ((await primaryNow()) === "node2" ? true : undefined), {
      what: "node2 promoted once the engine answers",
      timeoutMs: 20000,
    });
    expect((await events("node:fenced", since)).map((e) => e.node)).toEqual(["node1"]);
    const ackedAtPromotion = writer.acknowledgedSoFar();
    await eventually(() => (writer.acknowledgedSoFar() > ackedAtPromotion + 5 ? true : undefined), { what: "writes on node2" });
    const report = await writer.stop();
    const present = new Set((await sql<{ id: number }>(node("node2"), "SELECT id FROM acked_again")).map((r) => r.id));
    expect(report.acknowledged.filter((id) => !present.has(id))).toEqual([]);
  });
});
