import { expect } from "@jest/globals";
import { failoverHelpers } from "../helpers/failover";
import { graphqlRequest } from "../helpers/graphql-client";
import { eventually, startTestCluster, type TestCluster } from "../helpers/service";
import { removeFenceMarker } from "../../src/postgres/fence-marker";
import { editStoppedNodeConf } from "../../src/postgres/replication-config";

/**
 * The recorded state rolled back to before a failover (a Redis restored from
 * an older file, a lost write): it names the dead old primary, while the
 * members know better. No second primary may come of it, neither from the
 * monitor, nor from an operator's forced failover, nor from a restart that
 * finds the old primary's data without its fence.
 */
describe("a stale recorded state (rolled back to before a failover)", () => {
  let current: TestCluster | undefined;
  // The cluster of the moment: the test restarts the service on the same home.
  const cluster = new Proxy({} as TestCluster, { get: (_target, property) => Reflect.get(current!, property) as unknown });
  const { node, sql, state, events } = failoverHelpers(cluster);
  const writable = async (): Promise<string[]> => {
    const names: string[] = [];
    for (const member of cluster.service.nodes) {
      const rows = await sql<{ recovery: boolean }>(member, "SELECT pg_is_in_recovery() AS recovery").catch(() => null);
      if (rows && !rows[0]!.recovery) names.push(member.name);
    }
    return names;
  };
  let before = "";
  // Generous: once, in a full CI run, stopping the restarted service (three nodes, Redis) outlasted the default 120 s.
  afterAll(async () => {
    await current?.stop();
  }, 300_000);

  beforeAll(async () => {
    // No automatic rejoin: the old primary stays as the failover left it, for the restart case below.
    current = await startTestCluster("stale-state", { replicaCount: 2, leaseTtlMs: 2000, autoRejoin: false });
    await eventually(async () => ((await state()).eligible.length === 2 ? true : undefined), { what: "both replicas eligible" });
    before = (await cluster.service.redis.get(cluster.service.keys.clusterState))!;
    // A real failover: node1 dies, node2 (or node3) is promoted, the other follows it, node1 is fenced.
    await cluster.service.driver.kill(node("node1"));
    await eventually(
      async () => {
        const current = await state();
        return current.primary !== "node1" && (await cluster.service.failover.operation()) === null ? current : undefined;
      },
      { what: "the failover completed", timeoutMs: 60000 },
    );
    await cluster.service.failover.stop();
    // The record goes back to before it: node1 the primary, nobody fenced.
    await cluster.service.redis.set(cluster.service.keys.clusterState, before);
  });

  test("the monitor promotes no second primary, says why in health and events, and adopts the primary the members follow", async () => {
    const promotedBefore = await writable();
    expect(promotedBefore).toHaveLength(1);
    const since = Date.now();
    cluster.service.failover.start();
    const held = await eventually(async () => (await events("cluster:failover-held-back", since))[0], {
      what: "the failover held back",
      timeoutMs: 30000,
    });
    expect(held.message).toContain(`${promotedBefore[0]} is writable but node1 is the recorded primary`);
    const health = await eventually(
      async () => {
        const reply = await graphqlRequest<{ cluster: { health: string; healthReasons: string[] } }>(
          cluster.url,
          "{ cluster { health healthReasons } }",
          { token: cluster.token("viewer") },
        );
        return reply.data?.cluster.healthReasons.some((reason) => reason.startsWith("failover held back:"))
          ? reply.data.cluster
          : undefined;
      },
      { what: "the reason in the cluster's health" },
    );
    expect(health.health).not.toBe("healthy");
    // The other replica streams from the real primary: the record is brought to it, the old primary fenced.
    const adopted = await eventually(async () => (await events("cluster:primary-adopted", since))[0], { what: "the primary adopted" });
    expect(adopted.node).toBe(promotedBefore[0]);
    const record = await state();
    expect(record).toMatchObject({ primary: promotedBefore[0], syncSet: [], eligible: [] });
    expect(record.fenced).toContain("node1");
    // Several detection windows later: still one primary, no promotion begun, the record managed again.
    const { failoverCheckIntervalMs, failoverFailureThreshold } = cluster.config;
    await new Promise((resolve) => setTimeout(resolve, 4 * failoverCheckIntervalMs * failoverFailureThreshold));
    expect(await events("failover:promoting", since)).toEqual([]);
    expect(await writable()).toEqual(promotedBefore);
    expect((await state()).primary).toBe(promotedBefore[0]);
    // The remaining replica joins the adopted primary's synchronous set again and becomes eligible.
    await eventually(async () => ((await state()).eligible.length === 1 ? true : undefined), { what: "the other replica eligible again" });
  });

  test("an operator's forced failover on a stale record is refused with PROMOTION_UNSAFE, nothing changed", async () => {
    const primaries = await writable();
    // The record rolled back again, with nobody to adopt the real primary meanwhile.
    await cluster.service.failover.stop();
    await cluster.service.redis.set(cluster.service.keys.clusterState, before);
    const reply = await graphqlRequest(cluster.url, "mutation { failover(force: true) { id status } }", {
      token: cluster.token("operator"),
    });
    expect(reply.errors?.[0]?.extensions?.code).toBe("PROMOTION_UNSAFE");
    expect(reply.errors?.[0]?.message).toContain(`${primaries[0]} is writable`);
    expect(await writable()).toEqual(primaries);
  });

  test("a restart of every node never starts the old primary as a second one, even with its fence lost", async () => {
    const primaries = await writable();
    const old = node("node1");
    const { config, service } = cluster;
    await service.redis.set(service.keys.clusterState, before);
    // Every node stopped (a host reboot): the data directories, not the stale record, decide who starts as the primary.
    await service.stop({ reason: "test", keepRedis: true });
    current = undefined;
    // Its fence marker and setting gone (a hand-made copy, a restore of the directory): only the members can tell.
    await removeFenceMarker(service.driver, old);
    await editStoppedNodeConf(service.driver, old, { default_transaction_read_only: null });
    const since = Date.now();
    current = await startTestCluster("stale-state-restart", config);
    expect(await writable()).toEqual(primaries);
    const fenced = (await events("node:fenced", since)).filter((event) => event.node === "node1");
    expect(fenced[0]?.message).toContain(`it would start as a primary while ${primaries[0]} is writable`);
    expect((await cluster.service.driver.state(old)).phase).toBe("stopped");
  });
});
