import { nodeCheck } from "../../src/api/health-routes";
import type { ClusterSnapshot, NodeSnapshot } from "../../src/cluster/topology";

/** Only what a load-balancer check reads of a node. */
function node(name: string, role: "primary" | "replica", replication: { state: string; lagBytes: number | null } | null): NodeSnapshot {
  return { name, role, reachable: true, replication } as unknown as NodeSnapshot;
}

function snapshot(replicaLag: number | null, state = "streaming"): ClusterSnapshot {
  return {
    name: "t",
    primary: "node1",
    health: "healthy",
    healthReasons: [],
    collectedAt: "2026-01-01T00:00:00.000Z",
    nodes: [node("node1", "primary", null), node("node2", "replica", { state, lagBytes: replicaLag })],
  } as unknown as ClusterSnapshot;
}

describe("the replica check's lag bound (GET /nodes/:name/replica?maxLagBytes=N)", () => {
  test("a streaming replica at most N bytes behind is healthy; one byte more is not", () => {
    expect(nodeCheck(snapshot(4096), "node2", "replica", 4096).status).toBe(200);
    expect(nodeCheck(snapshot(4097), "node2", "replica", 4096).status).toBe(503);
    expect(nodeCheck(snapshot(0), "node2", "replica", 0).status).toBe(200);
  });

  test("an unknown lag does not meet a bound, and without a bound the lag does not matter", () => {
    expect(nodeCheck(snapshot(null), "node2", "replica", 1 << 30).status).toBe(503);
    expect(nodeCheck(snapshot(null), "node2", "replica", null).status).toBe(200);
    expect(nodeCheck(snapshot(1 << 30), "node2", "replica", null).status).toBe(200);
  });

  test("a bound does not make a replica that is not streaming healthy, nor the primary a replica", () => {
    expect(nodeCheck(snapshot(0, "catchup"), "node2", "replica", 1 << 30).status).toBe(503);
    expect(nodeCheck(snapshot(0), "node1", "replica", 1 << 30).status).toBe(503);
  });
});
