import "reflect-metadata";
import { lsnToNumber } from "../../src/postgres/lsn";
import { buildSnapshot, type NodeObservation, type NodeState } from "../../src/cluster/topology";
import { topologyChanges, isTopologyChange } from "../../src/cluster/topology-changes";
import { toNode } from "../../src/api/cluster/cluster.mapper";
import { runningLocalDriver as driver } from "../helpers/node-facts";

const primaryProbe = (senders: NodeState["senders"]): NodeState => ({
  role: "primary",
  version: "15.18",
  clusterName: "",
  readOnly: false,
  timeline: 1,
  currentLsn: "0/3000000",
  receivedLsn: null,
  replayedLsn: null,
  lastReplayAt: null,
  replayLagSeconds: null,
  replayPause: null,
  receiver: null,
  senders,
  slots: [],
});
const replicaProbe = (status: string | null): NodeState => ({
  role: "replica",
  version: "15.18",
  clusterName: "",
  readOnly: true,
  timeline: 1,
  currentLsn: "0/2000000",
  receivedLsn: "0/3000000",
  replayedLsn: "0/2000000",
  lastReplayAt: null,
  replayLagSeconds: 1.5,
  replayPause: "not paused",
  receiver: status
    ? { status, senderHost: "127.0.0.1", senderPort: 1, slotName: "relevo_node2", lastMessageAt: null, silentMs: null }
    : null,
  senders: [],
  slots: [],
});
/** Node `name` of cluster "c" answering as itself (its cluster_name), unless `answeredBy` says who does. */
const observe = (
  name: string,
  probe: NodeObservation["probe"],
  fallbackRole: "primary" | "replica" = "replica",
  answeredBy = `c-${name}`,
): NodeObservation => ({
  name,
  host: "127.0.0.1",
  port: 1,
  probe: "role" in probe ? { ...probe, clusterName: answeredBy } : probe,
  driver,
  fallbackRole,
  checkedAt: "t",
});
const sender = {
  applicationName: "node2",
  state: "streaming",
  lagBytes: 100,
  writeLagSeconds: 0.1,
  flushLagSeconds: 0.1,
  replayLagSeconds: 0.2,
  syncState: "async",
};

describe("topology snapshot (pure)", () => {
  test("one primary and a streaming replica: healthy, lag from the primary's pg_stat_replication", () => {
    const snapshot = buildSnapshot(
      "c",
      [observe("node1", primaryProbe([sender])), observe("node2", replicaProbe("streaming"))],
      1000,
      "now",
    );
    expect(snapshot).toMatchObject({ primary: "node1", health: "healthy", healthReasons: [] });
    expect(snapshot.nodes[1]!.replication).toMatchObject({
      state: "streaming",
      upstream: "node1",
      lagBytes: 100,
      replayLagSeconds: 0.2,
      syncState: "async",
      replayPause: "not paused",
    });
  });

  test("without a sender row the replica's own receiver and received−replayed bytes are used", () => {
    const snapshot = buildSnapshot(
      "c",
      [observe("node1", { error: "down" }, "primary"), observe("node2", replicaProbe("waiting"))],
      1000,
      "now",
    );
    expect(snapshot.health).toBe("critical");
    expect(snapshot.primary).toBeNull();
    expect(snapshot.nodes[0]).toMatchObject({ reachable: false, role: "primary", roleConfirmed: false, error: "down" });
    expect(snapshot.nodes[1]!.replication).toMatchObject({
      state: "unknown",
      lagBytes: lsnToNumber("0/3000000") - lsnToNumber("0/2000000"),
      replayLagSeconds: 1.5,
    });
  });

  test("lag over the threshold degrades the cluster; two primaries are critical", () => {
    const lagging = buildSnapshot(
      "c",
      [observe("node1", primaryProbe([{ ...sender, lagBytes: 5000 }])), observe("node2", replicaProbe("streaming"))],
      1000,
      "now",
    );
    expect(lagging.health).toBe("degraded");
    expect(lagging.healthReasons).toEqual(["node2 lags 5000 bytes"]);
    const split = buildSnapshot("c", [observe("node1", primaryProbe([])), observe("node2", primaryProbe([]))], 1000, "now");
    expect(split).toMatchObject({ health: "critical", primary: null, healthReasons: ["more than one primary: node1, node2"] });
  });

  test("a restored copy answering on a stopped member's port is not that member: unreachable, never a (second) primary", () => {
    const snapshot = buildSnapshot(
      "c",
      [observe("node1", primaryProbe([])), observe("node2", primaryProbe([]), "replica", "c-copy-0123456789")],
      1000,
      "now",
    );
    expect(snapshot).toMatchObject({ primary: "node1", health: "degraded", healthReasons: ["node2 is unreachable"] });
    expect(snapshot.nodes[1]).toMatchObject({
      name: "node2",
      reachable: false,
      roleConfirmed: false,
      role: "replica",
    });
    expect(snapshot.nodes[1]!.error).toContain('port 1 is answered by another server (cluster_name "c-copy-0123456789", not "c-node2")');
    // With the member that is the primary stopped, the copy on its port is no primary either.
    const alone = buildSnapshot("c", [observe("node1", primaryProbe([]), "primary", "c-inspect")], 1000, "now");
    expect(alone).toMatchObject({ primary: null, health: "critical", healthReasons: ["no reachable primary", "node1 is unreachable"] });
  });

  test("a reason the service sees (the archive refusing the primary's WAL) degrades a cluster whose nodes are all well", () => {
    const nodes = [observe("node1", primaryProbe([sender])), observe("node2", replicaProbe("streaming"))];
    const refused = buildSnapshot("c", nodes, 1000, "now", ["the WAL archive refuses node1"]);
    expect(refused).toMatchObject({ primary: "node1", health: "degraded", healthReasons: ["the WAL archive refuses node1"] });
    expect(buildSnapshot("c", nodes, 1000, "now", []).health).toBe("healthy");
  });

  test("a node snapshot published by an earlier version (no reseeding field) answers false, not a null in a non-null field", () => {
    const snapshot = buildSnapshot("c", [observe("node1", primaryProbe([sender]))], 1000, "now");
    const { reseeding: _dropped, ...earlier } = snapshot.nodes[0]!;
    expect(toNode(earlier as (typeof snapshot.nodes)[0] & object).reseeding).toBe(false);
    expect(toNode({ ...snapshot.nodes[0]!, reseeding: true }).reseeding).toBe(true);
  });

  test("LSNs compare as 64-bit positions", () => {
    expect(lsnToNumber("1/0") - lsnToNumber("0/FFFFFFFF")).toBe(1);
  });
});

describe("topology changes (pure)", () => {
  const healthy = buildSnapshot("c", [observe("node1", primaryProbe([sender])), observe("node2", replicaProbe("streaming"))], 1000, "a");

  test("the first snapshot is a change without events; an identical one is neither", () => {
    expect(topologyChanges(null, healthy, 1000)).toEqual([]);
    expect(isTopologyChange(null, healthy, [])).toBe(true);
    const same = buildSnapshot(
      "c",
      [observe("node1", primaryProbe([{ ...sender, lagBytes: 200 }])), observe("node2", replicaProbe("streaming"))],
      1000,
      "b",
    );
    expect(topologyChanges(healthy, same, 1000)).toEqual([]);
    expect(isTopologyChange(healthy, same, [])).toBe(false);
  });

  test("a replica that goes away: node:down (warning) and a health change", () => {
    const next = buildSnapshot("c", [observe("node1", primaryProbe([])), observe("node2", { error: "connection refused" })], 1000, "b");
    const events = topologyChanges(healthy, next, 1000);
    expect(events.map((e) => [e.kind, e.node, e.severity])).toEqual([["node:down", "node2", "warning"]]);
    expect(isTopologyChange(healthy, next, events)).toBe(true);
  });

  test("the primary going away is critical and changes the primary", () => {
    const next = buildSnapshot(
      "c",
      [observe("node1", { error: "timeout" }, "primary"), observe("node2", replicaProbe("waiting"))],
      1000,
      "b",
    );
    const kinds = topologyChanges(healthy, next, 1000).map((e) => `${e.kind}:${e.severity}`);
    // The replica's lag is now what it received but has not replayed (16 MiB here): over the threshold.
    expect(kinds).toEqual([
      "cluster:primary-changed:critical",
      "node:down:critical",
      "replication:streaming-lost:warning",
      "replication:lag-high:warning",
    ]);
  });

  test("lag crossing the threshold either way is an event", () => {
    const high = buildSnapshot(
      "c",
      [observe("node1", primaryProbe([{ ...sender, lagBytes: 5000 }])), observe("node2", replicaProbe("streaming"))],
      1000,
      "b",
    );
    expect(topologyChanges(healthy, high, 1000).map((e) => e.kind)).toEqual(["replication:lag-high"]);
    expect(topologyChanges(high, healthy, 1000).map((e) => e.kind)).toEqual(["replication:lag-normal"]);
  });

  test("a promotion: role change and new primary", () => {
    const promoted = buildSnapshot("c", [observe("node1", { error: "down" }), observe("node2", primaryProbe([]))], 1000, "b");
    expect(topologyChanges(healthy, promoted, 1000).map((e) => e.kind)).toEqual([
      "cluster:primary-changed",
      "node:down",
      "node:role-changed",
    ]);
  });
});
