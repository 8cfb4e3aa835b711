import { createLogger } from "../../src/log";
import { ensureRedisServer, type RedisServerHandle } from "../../src/redis/redis-server";
import { graphqlRequest } from "../helpers/graphql-client";
import { eventually, startTestCluster, useTestCluster, type TestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";
import { ownRedisTls } from "../../src/redis/redis-tls";
import { CertificateAuthority } from "../../src/tls/certificate-authority";

/** The cluster's Redis server: adopted when running, started when not (TLS, certificates from the cluster's CA). */
async function redisServerOf(cluster: TestCluster): Promise<RedisServerHandle> {
  return ensureRedisServer({
    home: cluster.config.home,
    host: cluster.config.host,
    port: cluster.config.redisPort,
    password: cluster.service.secrets.redisPassword,
    bin: cluster.config.redisServerBin,
    startTimeoutMs: 30000,
    logger: createLogger({ level: "silent" }),
    tls: await ownRedisTls(await CertificateAuthority.load(cluster.config, { role: "services" })),
  });
}

describe("Redis unavailable: clear errors, nothing crashes, nothing decided, everything resumes", () => {
  const cluster = useTestCluster("redis-outage");

  const redisServer = () => redisServerOf(cluster);

  const [node1, node2] = [() => cluster.service.nodes[0]!, () => cluster.service.nodes[1]!];
  const synchronousStandbys = async (): Promise<string> =>
    (await sqlOn<{ names: string }>(node1(), cluster.service.secrets, "SELECT current_setting('synchronous_standby_names') AS names"))[0]!
      .names;
  const inRecovery = async (): Promise<boolean> =>
    (await sqlOn<{ r: boolean }>(node1(), cluster.service.secrets, "SELECT pg_is_in_recovery() AS r"))[0]!.r;

  test("while Redis is down the API answers SERVICE_UNAVAILABLE at once; the monitor keeps the synchronous set and the roles; events wait and are consolidated after", async () => {
    const before = await graphqlRequest(cluster.url, "{ cluster { name } }", { token: cluster.token("viewer") });
    expect(before.data).toEqual({ cluster: { name: "test" } });
    // The monitor has put node2 in the synchronous set: what it must leave alone while Redis is down.
    const syncSet = await eventually(async () => ((await synchronousStandbys()).includes("node2") ? synchronousStandbys() : undefined), {
      what: "node2 in the synchronous set",
    });

    const outageBegan = new Date();
    await (await redisServer()).stop();
    // "While Redis is down" as the service sees it: its connections have noticed.
    await eventually(() => (cluster.service.redis.status !== "ready" ? true : undefined), { what: "the service to see Redis gone" });
    const started = Date.now();
    const during = await graphqlRequest(cluster.url, "{ cluster { name } }", { token: cluster.token("viewer") });
    expect(Date.now() - started).toBeLessThan(3000);
    expect(during.errors?.[0]?.extensions?.code).toBe("SERVICE_UNAVAILABLE");
    expect(during.errors?.[0]?.message).toMatch(/Redis is unavailable/);
    const events = await graphqlRequest(cluster.url, "{ events(first: 1) { edges { cursor } } }", { token: cluster.token("viewer") });
    expect(events.errors?.[0]?.extensions?.code).toBe("SERVICE_UNAVAILABLE");
    expect((await fetch(cluster.url.replace("/graphql", "/health"))).status).toBe(503);

    // The collector keeps watching: the replica going down is noticed and kept for Redis.
    await cluster.service.driver.stop(node2(), { mode: "fast", timeoutMs: 30000 });
    await eventually(() => (cluster.service.events.bufferedCount > 0 ? true : undefined), { what: "node:down buffered" });

    // The failover monitor decides nothing without Redis, where its state lives: over a whole detection window
    // after node2 went (the monitor drops a synchronous standby that stopped streaming at its next check when Redis
    // is up), the synchronous set stays as recorded, though its standby is gone, and node1 stays the primary.
    const { failoverCheckIntervalMs, failoverFailureThreshold } = cluster.config;
    await new Promise((resolve) => setTimeout(resolve, failoverCheckIntervalMs * (failoverFailureThreshold + 1)));
    expect(await synchronousStandbys()).toBe(syncSet);
    expect(await inRecovery()).toBe(false);
    const outageEnded = new Date();

    const restarted = await redisServer();
    expect(restarted.started).toBe(true);
    const after = await eventually(
      async () => {
        const response = await graphqlRequest<{ cluster: { nodes: Array<{ name: string; reachable: boolean }> } }>(
          cluster.url,
          "{ cluster { nodes { name reachable } } }",
          { token: cluster.token("viewer") },
        );
        // Redis restores its last snapshot from the append-only file; the next poll replaces it.
        return response.data?.cluster.nodes.find((n) => n.name === "node2")?.reachable === false ? response.data : undefined;
      },
      { what: "API answering again with the current topology", timeoutMs: 10000 },
    );
    expect(after.cluster.nodes.map((n) => [n.name, n.reachable])).toEqual([
      ["node1", true],
      ["node2", false],
    ]);
    const rows = await eventually(
      async () => {
        const found = await sqlOn(
          cluster.service.nodes[0]!,
          cluster.service.secrets,
          "SELECT kind FROM events WHERE kind = 'node:down' AND node = 'node2'",
          [],
          "relevo",
        );
        return found.length === 1 ? found : undefined;
      },
      { what: "node:down consolidated" },
    );
    expect(rows).toEqual([{ kind: "node:down" }]);
    expect(cluster.service.events.bufferedCount).toBe(0);
    // Nor did it decide anything it could not record: no change of the set, no failover, during the outage.
    const decided = await sqlOn(
      node1(),
      cluster.service.secrets,
      `SELECT kind, message FROM events WHERE (kind LIKE 'failover:%' OR kind = 'replication:sync-changed') AND occurred_at BETWEEN $1 AND $2`,
      [outageBegan, outageEnded],
      "relevo",
    );
    expect(decided).toEqual([]);
    await cluster.service.driver.start(node2(), { timeoutMs: 60000 });
  });
});

describe("stopping the service while Redis is down", () => {
  test("finishes promptly and leaves nothing running (the scheduler does not wait for ever to unlock its jobs)", async () => {
    const cluster = await startTestCluster("redis-down-stop");
    await (await redisServerOf(cluster)).stop();
    const started = Date.now();
    await cluster.stop();
    expect(Date.now() - started).toBeLessThan(20000);
    for (const node of cluster.service.nodes) expect((await cluster.service.driver.state(node)).phase).toBe("stopped");
  });
});
