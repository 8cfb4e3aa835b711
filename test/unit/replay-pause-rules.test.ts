import { pausedReplicas, unheldReplayPauses } from "../../src/cluster/replay-pause-rules";
import type { ClusterSnapshot, NodeSnapshot } from "../../src/cluster/topology";
import type { ReplayPauseState } from "../../src/postgres/replay-pause";

const node = (name: string, role: "primary" | "replica", replayPause: ReplayPauseState | null, reachable = true): NodeSnapshot =>
  ({ name, role, reachable, replication: role === "replica" ? { replayPause } : null }) as unknown as NodeSnapshot;
const snapshot = (...nodes: NodeSnapshot[]): ClusterSnapshot => ({ nodes }) as unknown as ClusterSnapshot;

describe("replay pause watch (pure)", () => {
  test("paused replicas: paused or pause requested, answering; never the primary or an unreachable node", () => {
    const cluster = snapshot(
      node("node1", "primary", null),
      node("node2", "replica", "paused"),
      node("node3", "replica", "pause requested"),
      node("node4", "replica", "not paused"),
      node("node5", "replica", "paused", false),
      node("node6", "replica", null),
    );
    expect(pausedReplicas(cluster)).toEqual(["node2", "node3"]);
    expect(pausedReplicas(null)).toEqual([]);
  });

  const base = { held: new Set<string>(), seenSince: new Map<string, number>(), graceMs: 2000, maintenance: false };

  test("an unheld pause is resumed once seen for the grace, not before", () => {
    const first = unheldReplayPauses({ ...base, paused: ["node2"], now: 10_000 });
    expect(first).toEqual({ seenSince: new Map([["node2", 10_000]]), resume: [] });
    const early = unheldReplayPauses({ ...base, paused: ["node2"], seenSince: first.seenSince, now: 11_999 });
    expect(early.resume).toEqual([]);
    const due = unheldReplayPauses({ ...base, paused: ["node2"], seenSince: early.seenSince, now: 12_000 });
    expect(due).toEqual({ seenSince: new Map([["node2", 10_000]]), resume: ["node2"] });
  });

  test("a pause a capture holds is left alone, and its time starts again once unheld", () => {
    const seen = new Map([["node2", 0]]);
    const held = unheldReplayPauses({ ...base, paused: ["node2"], held: new Set(["node2"]), seenSince: seen, now: 60_000 });
    expect(held).toEqual({ seenSince: new Map(), resume: [] });
    expect(unheldReplayPauses({ ...base, paused: ["node2"], seenSince: held.seenSince, now: 61_000 }).resume).toEqual([]);
  });

  test("a replica no longer paused is forgotten; maintenance mode resumes nothing", () => {
    const seen = new Map([["node2", 0]]);
    expect(unheldReplayPauses({ ...base, paused: [], seenSince: seen, now: 60_000 })).toEqual({ seenSince: new Map(), resume: [] });
    expect(unheldReplayPauses({ ...base, paused: ["node2"], seenSince: seen, now: 60_000, maintenance: true }).resume).toEqual([]);
  });
});
