import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { expect } from "@jest/globals";
import { loadConfig } from "../../src/config/config";
import { callApi } from "../../src/cli/api-client";
import { CertificateAuthority } from "../../src/tls/certificate-authority";
import { graphqlRequest, subscriptionClient, SubscriptionRecorder, testFetch, trustingWebSocket } from "../helpers/graphql-client";
import { tempHome } from "../helpers/home";
import { eventually, useTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";
import { createClient } from "graphql-ws";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { projectRoot } from "../../src/util/project-root";
import { cliEnvFor } from "../helpers/cli-env";
import { servedTlsSerial } from "../helpers/tls";

const execFileAsync = promisify(execFile);
const BIN = path.join(projectRoot(), "bin/relevo");

const CLUSTER_QUERY = `query {
  cluster {
    name health
    primary { name }
    replicas { name }
    nodes {
      name role reachable host port timeline currentLsn version
      replication { state upstream slotName lagBytes replayLagSeconds writeLagSeconds syncState }
      slots { name active retainedBytes }
      driver { kind state pid dataDirectory }
    }
  }
}`;

type ClusterData = {
  cluster: {
    name: string;
    health: string;
    primary: { name: string } | null;
    replicas: Array<{ name: string }>;
    nodes: Array<{
      name: string;
      role: string;
      reachable: boolean;
      port: number;
      timeline: number | null;
      replication: {
        state: string;
        upstream: string | null;
        slotName: string | null;
        lagBytes: number | null;
        replayLagSeconds: number | null;
      } | null;
      slots: Array<{ name: string; active: boolean; retainedBytes: number | null }>;
      driver: { kind: string; state: string; pid: number | null; dataDirectory: string };
    }>;
  };
};

describe("topology over GraphQL", () => {
  // HTTPS with a certificate from the cluster's CA (RELEVO_API_TLS=on): every query here goes over https, the subscriptions over wss.
  const cluster = useTestCluster("topology", { apiTls: "on" });

  test("the cluster query reports one primary and one streaming replica with lag figures", async () => {
    await sqlOn(cluster.service.nodes[0]!, cluster.service.secrets, "CREATE TABLE lag_probe AS SELECT g FROM generate_series(1, 1000) g");
    // The WAL archiver connects asynchronously after start-up: wait until its slot and the replica's are in use
    // (the archive's hold slot never is).
    const response = await eventually(async () => {
      await cluster.service.collector.pollNow();
      const answer = await graphqlRequest<ClusterData>(cluster.url, CLUSTER_QUERY, { token: cluster.token("viewer") });
      const slots = answer.data?.cluster.nodes[0]?.slots ?? [];
      return slots.length === 3 && slots.every((slot) => slot.active === (slot.name !== "relevo_archive_hold")) ? answer : undefined;
    });
    expect(response.errors).toBeUndefined();
    const data = response.data!.cluster;
    expect(data).toMatchObject({ name: "test", health: "HEALTHY", primary: { name: "node1" }, replicas: [{ name: "node2" }] });
    const [primary, replica] = data.nodes;
    expect(primary).toMatchObject({
      name: "node1",
      role: "PRIMARY",
      reachable: true,
      port: cluster.config.primaryPort,
      timeline: 1,
      replication: null,
    });
    expect(primary!.slots).toEqual([
      { name: "relevo_archive", active: true, retainedBytes: expect.any(Number) }, // the WAL archiver's
      { name: "relevo_archive_hold", active: false, retainedBytes: expect.any(Number) }, // never connected: moved past what the repository holds
      { name: "relevo_node2", active: true, retainedBytes: expect.any(Number) },
    ]);
    expect(primary!.driver).toMatchObject({ kind: "local", state: "RUNNING", pid: expect.any(Number) });
    expect(replica).toMatchObject({ name: "node2", role: "REPLICA", reachable: true, port: cluster.config.replicaPort, timeline: 1 });
    expect(replica!.replication).toMatchObject({ state: "STREAMING", upstream: "node1", slotName: "relevo_node2" });
    expect(replica!.replication!.lagBytes).toEqual(expect.any(Number));
    expect(replica!.replication!.lagBytes).toBeGreaterThanOrEqual(0);
    expect(replica!.replication!.replayLagSeconds).toEqual(expect.any(Number));
  });

  test("a repeated topology query answers the same bytes until the topology changes, then the new state", async () => {
    const ask = async (): Promise<string> =>
      (
        await testFetch(cluster.url, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${cluster.token("viewer")}` },
          body: JSON.stringify({ query: "{ cluster { collectedAt nodes { name checkedAt } } }" }),
        })
      ).text();
    const collectedAt = (text: string) => (JSON.parse(text) as { data: { cluster: { collectedAt: string } } }).data.cluster.collectedAt;
    // No poll in between: the snapshot stays the same for as long as the collector is stopped.
    await cluster.service.collector.stop();
    try {
      const first = await ask();
      const second = await ask();
      expect(second).toBe(first);
      // A new snapshot (a poll writes one, with a new collectedAt) is answered at once: the cached answer is
      // dropped with the snapshot it came from, not after some time of its own (the reader's own bound is 1 s).
      await cluster.service.collector.pollNow();
      const later = await eventually(
        async () => {
          const text = await ask();
          return collectedAt(text) !== collectedAt(first) ? text : undefined;
        },
        { timeoutMs: 1000, what: "the answer for the new snapshot" },
      );
      expect(new Date(collectedAt(later)).getTime()).toBeGreaterThan(new Date(collectedAt(first)).getTime());
    } finally {
      cluster.service.collector.start();
    }
  });

  test("node(name) returns one node", async () => {
    const response = await graphqlRequest(cluster.url, `{ node(name: "node2") { name role } }`, { token: cluster.token("viewer") });
    expect(response.data).toEqual({ node: { name: "node2", role: "REPLICA" } });
  });

  test("a replica's replay left paused shows as PAUSED, is resumed within 10 s, and says so in an event", async () => {
    const replica = cluster.service.nodes[1]!;
    const pauseState = async () =>
      (await sqlOn<{ state: string }>(replica, cluster.service.secrets, "SELECT pg_get_wal_replay_pause_state() AS state"))[0]!.state;
    // As a reference point's capture would leave it if its service died between the pause and the resume.
    await sqlOn(replica, cluster.service.secrets, "SELECT pg_wal_replay_pause()");
    const pausedAt = Date.now();
    const seen = await eventually(
      async () => {
        const answer = await graphqlRequest<{ node: { replication: { replayPause: string } } }>(
          cluster.url,
          `{ node(name: "node2") { replication { replayPause } } }`,
          { token: cluster.token("viewer") },
        );
        return answer.data?.node.replication.replayPause === "PAUSED" ? "PAUSED" : undefined;
      },
      { timeoutMs: 5000, what: "node2 shown with its replay paused" },
    );
    expect(seen).toBe("PAUSED");
    await eventually(async () => ((await pauseState()) === "not paused" ? true : undefined), {
      timeoutMs: 10000,
      what: "node2's replay resumed",
    });
    expect(Date.now() - pausedAt).toBeLessThan(10000);
    const event = await eventually(async () => {
      const response = await graphqlRequest<{ events: { edges: Array<{ node: { node: string; data: { state: string } } }> } }>(
        cluster.url,
        `{ events(first: 5, kinds: ["node:replay-resumed"]) { edges { node { node data } } } }`,
        { token: cluster.token("viewer") },
      );
      return response.data?.events.edges[0]?.node;
    });
    expect(event).toMatchObject({ node: "node2", data: { state: "paused" } });
    // Replay goes on: a row written now reaches the replica.
    await sqlOn(cluster.service.nodes[0]!, cluster.service.secrets, "CREATE TABLE after_resume AS SELECT 1 AS one");
    await eventually(async () =>
      (await sqlOn<{ found: boolean }>(replica, cluster.service.secrets, "SELECT to_regclass('after_resume') IS NOT NULL AS found"))[0]!
        .found
        ? true
        : undefined,
    );
  });

  test("the reader connection string reaches the replica through libpq", async () => {
    const response = await graphqlRequest<{ cluster: { readerConnectionString: string } }>(
      cluster.url,
      "{ cluster { readerConnectionString } }",
      { token: cluster.token("viewer") },
    );
    const uri = response.data!.cluster.readerConnectionString;
    expect(uri).not.toContain(cluster.service.secrets.superuserPassword);
    // Both nodes are listed, the primary first: only target_session_attrs sends libpq to the standby.
    const { stdout } = await execFileAsync(
      `${cluster.config.pgBinDir}/psql`,
      [uri, "-XAtc", "SELECT current_setting('port'), pg_is_in_recovery()"],
      {
        env: { ...process.env, PGUSER: "postgres", PGPASSWORD: cluster.service.secrets.superuserPassword },
      },
    );
    expect(stdout.trim()).toBe(`${cluster.config.replicaPort}|t`);
  });

  test("the API is HTTPS: the CLI's client (verifying against the services CA) works; plain http and a client trusting another CA do not", async () => {
    expect(cluster.url).toBe(`https://127.0.0.1:${cluster.config.apiPort}/graphql`);
    // The CLI's commands (relevo backup, failover…) go through callApi: https with the data home's services CA.
    expect(await callApi(cluster.config, "{ cluster { name } }")).toEqual({ cluster: { name: "test" } });
    // The API's certificate is the services CA's, never the nodes' (whose keys the PostgreSQL OS user reads): a client
    // trusting the nodes' CA alone refuses it, one trusting the services CA alone (as the docs tell curl) accepts it.
    const servicesCa = await readFile(cluster.service.servicesCaFile, "utf8");
    const nodesCa = await readFile(cluster.service.caFile, "utf8");
    expect(await servedTlsSerial("127.0.0.1", cluster.config.apiPort, servicesCa)).toMatch(/^[0-9A-F]+$/);
    await expect(servedTlsSerial("127.0.0.1", cluster.config.apiPort, nodesCa)).rejects.toThrow(/unable to verify the first certificate/);
    // Plain HTTP to the same port: the server answers a TLS handshake only.
    const plain = await fetch(cluster.url.replace(/^https/, "http"), {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${cluster.token("viewer")}` },
      body: JSON.stringify({ query: "{ cluster { name } }" }),
    }).then(
      (response) => response.status,
      (error: Error) => (error.cause as Error | undefined)?.message ?? error.message,
    );
    expect(plain).toMatch(/socket|closed|reset|other side/i);
    // A client that trusts another CA refuses the server before it sends its token, over https and wss alike.
    const stranger = await CertificateAuthority.load(loadConfig({}, { home: await tempHome("topology-stranger-ca") }));
    await expect(testFetch(cluster.url, { method: "POST", ca: [stranger.certificatePem], body: "{}" })).rejects.toThrow(
      /unable to verify the first certificate/,
    );
    const socket = createClient({
      url: cluster.url.replace(/^https/, "wss"),
      webSocketImpl: trustingWebSocket([stranger.certificatePem]),
      connectionParams: { authorization: `Bearer ${cluster.token("viewer")}` },
      retryAttempts: 0,
      lazy: true,
    });
    try {
      const failure = await new Promise<unknown>((resolve) => {
        socket.subscribe(
          { query: "subscription { topologyChanged { health } }" },
          { next: () => undefined, error: resolve, complete: () => resolve(null) },
        );
      });
      // ws's ErrorEvent, carrying the TLS client's refusal.
      // Node 24 adds a hint after the reason (--use-system-ca); Node 22 says the reason alone.
      expect((failure as { message?: string }).message).toMatch(/^unable to verify the first certificate/);
    } finally {
      await socket.dispose();
    }
  });

  test("certificates rotate: the API serves a new certificate of the services CA without a restart; a subscription open across it keeps delivering", async () => {
    const ca = await readFile(cluster.service.servicesCaFile, "utf8");
    const before = await servedTlsSerial("127.0.0.1", cluster.config.apiPort, ca);
    const client = subscriptionClient(cluster.url, cluster.token("viewer"));
    const events = new SubscriptionRecorder<{ clusterEvents: { kind: string } }>(
      client,
      `subscription { clusterEvents(kinds: ["tls:rotated"]) { kind } }`,
    );
    try {
      await new Promise((resolve) => setTimeout(resolve, 500)); // let the subscription register
      const { stdout } = await execFileAsync("node", [BIN, "certificates", "rotate"], { env: cliEnvFor(cluster.config) });
      const after = await servedTlsSerial("127.0.0.1", cluster.config.apiPort, ca);
      expect(after).not.toBe(before);
      expect(stdout).toContain(`api:${cluster.config.apiPort}: renewed, serves ${after} (was ${before})`);
      // The socket opened before the rotation (on the previous certificate) delivers the rotation's own event.
      expect(await events.next(() => true)).toEqual({ clusterEvents: { kind: "tls:rotated" } });
      expect(await callApi(cluster.config, "{ cluster { name } }")).toEqual({ cluster: { name: "test" } });
      // Near its end the API's certificate is renewed by this instance's own expiry check (not the shared one).
      await cluster.service.certificates.checkExpiry(new Date(Date.now() + 355 * 86_400_000), { shared: false });
      const renewed = await servedTlsSerial("127.0.0.1", cluster.config.apiPort, ca);
      expect(renewed).not.toBe(after);
      const expiring = (await cluster.service.events.page({ first: 20, kinds: ["tls:expiring"] })).events;
      expect(expiring.map((event) => (event.data as { holder: string }).holder)).toContain(`api:${cluster.config.apiPort}`);
    } finally {
      events.dispose();
      await client.dispose();
    }
  });

  test("load-balancer health routes answer without a token", async () => {
    const status = async (path: string) => (await testFetch(cluster.url.replace("/graphql", path))).status;
    expect(await status("/nodes/node1/primary")).toBe(200);
    expect(await status("/nodes/node1/replica")).toBe(503);
    expect(await status("/nodes/node2/replica")).toBe(200);
    // A lag bound the replica meets (what lag a bound refuses is unit-tested: test/unit/health-routes.test.ts).
    expect(await status("/nodes/node2/replica?maxLagBytes=1073741824")).toBe(200);
    expect(await status("/nodes/node2/primary")).toBe(503);
    expect(await status("/nodes/nope/primary")).toBe(404);
    expect(await status("/health")).toBe(200);
  });

  test("GraphiQL is served from local assets, without a CDN", async () => {
    const response = await testFetch(cluster.url, { headers: { accept: "text/html" } });
    expect(response.status).toBe(200);
    const html = await response.text();
    expect(html).toContain("graphiql");
    expect(html).not.toMatch(/<script[^>]+src="https?:\/\//);
    expect(html).not.toMatch(/<link[^>]+href="https?:\/\//);
  });

  test("stopping the replica: the subscription delivers the change and the query shows it unreachable", async () => {
    const client = subscriptionClient(cluster.url, cluster.token("viewer"));
    const topology = new SubscriptionRecorder<{ topologyChanged: ClusterData["cluster"] }>(
      client,
      `subscription { topologyChanged { health nodes { name reachable role replication { state } } } }`,
    );
    const events = new SubscriptionRecorder<{ clusterEvents: { kind: string; node: string | null } }>(
      client,
      `subscription { clusterEvents(kinds: ["node:down"]) { kind node } }`,
    );
    try {
      await new Promise((resolve) => setTimeout(resolve, 500)); // let both subscriptions register
      await cluster.service.driver.stop(cluster.service.nodes[1]!, { mode: "fast", timeoutMs: 30000 });
      const changed = await topology.next((payload) => payload.topologyChanged.nodes.some((n) => n.name === "node2" && !n.reachable));
      expect(changed.topologyChanged.health).toBe("DEGRADED");
      expect(await events.next((payload) => payload.clusterEvents.node === "node2")).toEqual({
        clusterEvents: { kind: "node:down", node: "node2" },
      });
      // The poll that first saw it unreachable may have caught the postmaster still exiting; the next one sees it gone.
      const response = await eventually(async () => {
        const answer = await graphqlRequest<ClusterData>(cluster.url, CLUSTER_QUERY, { token: cluster.token("viewer") });
        return answer.data?.cluster.nodes.find((n) => n.name === "node2")?.driver.state === "STOPPED" ? answer : undefined;
      });
      const replica = response.data!.cluster.nodes.find((n) => n.name === "node2")!;
      expect(replica).toMatchObject({ reachable: false, role: "REPLICA", driver: { state: "STOPPED", pid: null } });
      expect(response.data!.cluster.health).toBe("DEGRADED");
      expect((await testFetch(cluster.url.replace("/graphql", "/nodes/node2/replica"))).status).toBe(503);

      await cluster.service.driver.start(cluster.service.nodes[1]!, { timeoutMs: 60000 });
      const back = await topology.next((payload) =>
        payload.topologyChanged.nodes.some((n) => n.name === "node2" && n.replication?.state === "STREAMING"),
      );
      expect(back.topologyChanged.health).toBe("HEALTHY");
      expect(topology.errors).toEqual([]);
      expect(events.errors).toEqual([]);
    } finally {
      topology.dispose();
      events.dispose();
      await client.dispose();
    }
  });

  test("streaming loss and recovery are events, newest first, filterable by kind and node", async () => {
    const page = await eventually(async () => {
      const response = await graphqlRequest<{ events: { edges: Array<{ node: { kind: string; node: string } }> } }>(
        cluster.url,
        `{ events(first: 10, node: "node2") { edges { node { kind node } } } }`,
        { token: cluster.token("viewer") },
      );
      const kinds = response.data?.events.edges.map((e) => e.node.kind) ?? [];
      return kinds.includes("node:up") ? kinds : undefined;
    });
    expect(page.indexOf("node:up")).toBeLessThan(page.indexOf("node:down"));
    const filtered = await graphqlRequest<{
      events: { edges: Array<{ node: { kind: string } }>; pageInfo: { hasNextPage: boolean; endCursor: string } };
    }>(cluster.url, `{ events(first: 1, kinds: ["node:created"]) { edges { node { kind } } pageInfo { hasNextPage endCursor } } }`, {
      token: cluster.token("viewer"),
    });
    expect(filtered.data!.events.edges).toEqual([{ node: { kind: "node:created" } }]);
    expect(filtered.data!.events.pageInfo.hasNextPage).toBe(true);
    const next = await graphqlRequest<{
      events: { edges: Array<{ node: { kind: string; node: string } }>; pageInfo: { hasNextPage: boolean } };
    }>(
      cluster.url,
      `query($after: String) { events(first: 5, after: $after, kinds: ["node:created"]) { edges { node { kind node } } pageInfo { hasNextPage } } }`,
      { token: cluster.token("viewer"), variables: { after: filtered.data!.events.pageInfo.endCursor } },
    );
    expect(next.data!.events.edges).toEqual([{ node: { kind: "node:created", node: "node1" } }]);
    expect(next.data!.events.pageInfo.hasNextPage).toBe(false);
  });
});
