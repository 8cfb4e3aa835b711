import { chooseCandidate, ineligibility, lostBytesAtPromotion, lostBytesOf, type CandidateRules } from "../../src/failover/candidate";
import type { ClusterState } from "../../src/failover/cluster-state";
import {
  afterMissedCheck,
  coolDown,
  desiredSynchronousSet,
  holdOffAfter,
  JOIN_LAG_BYTES,
  joinProgress,
  preferredInSync,
  primaryToAdopt,
  replicasConfirmLoss,
  RETRY_AFTER_MS,
  standbysCaughtUp,
  standbysToJoin,
} from "../../src/failover/monitor-rules";
import { primaryVerdict, type StandbySeen } from "../../src/failover/primary-check";
import { followWaits, outOfEligible } from "../../src/failover/switchover-follow";
import { ErrorCode, RelevoError } from "../../src/errors";
import type { NodePosition } from "../../src/postgres/node-facts";
import { position, replicaFacts, testNode } from "../helpers/node-facts";

const synchronousRules: CandidateRules = {
  to: null,
  force: false,
  synchronous: true,
  eligible: ["node2"],
  lastPrimaryLsn: "0/5000000",
  maximumLagBytes: 1024,
  preferred: "node1",
};
const asynchronousRules: CandidateRules = { ...synchronousRules, synchronous: false, eligible: [] };

describe("failover candidate (pure)", () => {
  test("synchronous mode promotes only an in-sync standby, even when another is further ahead", () => {
    const choice = chooseCandidate([replicaFacts("node3", "0/6000000"), replicaFacts("node2", "0/5000000")], synchronousRules);
    expect(choice).toEqual({ ok: true, node: replicaFacts("node2", null).node, lostBytes: 0 });
  });

  test("nobody eligible: no candidate, with every replica's reason", () => {
    const choice = chooseCandidate([replicaFacts("node3", "0/6000000")], { ...synchronousRules, eligible: [] });
    expect(choice.ok).toBe(false);
    expect(!choice.ok && choice.reason).toBe(
      "no eligible replica: node3 is not known to hold every acknowledged commit (not an in-sync standby)",
    );
    expect(chooseCandidate([], synchronousRules)).toEqual({ ok: false, reason: "no replica answers: nothing can be promoted" });
  });

  test("force promotes the most advanced replica whatever the records say", () => {
    const choice = chooseCandidate([replicaFacts("node2", "0/4000000"), replicaFacts("node3", "0/4800000")], {
      ...synchronousRules,
      eligible: [],
      force: true,
    });
    expect(choice.ok && choice.node.name).toBe("node3");
    expect(choice.ok && choice.lostBytes).toBe(0x5000000 - 0x4800000);
  });

  test("asynchronous mode: within the lag limit of the old primary's last LSN, else refused; unknown lag is refused", () => {
    expect(ineligibility(replicaFacts("node2", "0/4FFFC00"), asynchronousRules)).toBeNull();
    expect(ineligibility(replicaFacts("node2", "0/4FFFBFF"), asynchronousRules)).toBe("node2 was 1025 bytes behind (limit 1024)");
    expect(ineligibility(replicaFacts("node2", "0/4000000"), { ...asynchronousRules, lastPrimaryLsn: null })).toBe(
      "node2's lag behind the old primary is unknown",
    );
    expect(lostBytesOf(replicaFacts("node2", "0/6000000"), "0/5000000")).toBe(0);
  });

  test("the loss at a promotion: what the old primary is known to have reached that the promoted node had not received", () => {
    // A switchover: the target received past the old primary's shutdown checkpoint, the furthest it reached.
    expect(lostBytesAtPromotion(["0/5000028", "0/5000000"], "0/50000A0")).toBe(0);
    // Seen further than its last checkpoint (it did not stop cleanly): the difference is lost.
    expect(lostBytesAtPromotion(["0/5000028", "0/5000100"], "0/50000A0")).toBe(0x60);
    // The furthest known point counts, whichever it is; unknown ones do not.
    expect(lostBytesAtPromotion(["0/6000000", null, "0/5800000"], "0/5000000")).toBe(0x1000000);
    expect(lostBytesAtPromotion([null], "0/5000000")).toBe(0);
  });

  test("an operator's choice is honoured only if it answers as a replica and is eligible", () => {
    const replicas = [replicaFacts("node2", "0/5000000"), replicaFacts("node3", "0/6000000")];
    expect(chooseCandidate(replicas, { ...synchronousRules, to: "node2" })).toMatchObject({ ok: true, node: { name: "node2" } });
    expect(chooseCandidate(replicas, { ...synchronousRules, to: "node3" })).toEqual({
      ok: false,
      reason: "node3 is not known to hold every acknowledged commit (not an in-sync standby); failover with force to promote it anyway",
    });
    expect(chooseCandidate(replicas, { ...synchronousRules, to: "" })).toMatchObject({ ok: true, node: { name: "node2" } });
    expect(chooseCandidate(replicas, { ...synchronousRules, to: "", force: true })).toMatchObject({ ok: true, node: { name: "node3" } });
    expect(chooseCandidate(replicas, { ...synchronousRules, to: "node4" })).toEqual({
      ok: false,
      reason: "node4 does not answer as a replica",
    });
  });
});

describe("failover monitor rules (pure)", () => {
  test("a failure is judged only past the threshold and outside maintenance", () => {
    expect(afterMissedCheck({ failures: 2, threshold: 3, maintenance: false })).toEqual({ go: false, reason: "missed 2 of 3 checks" });
    expect(afterMissedCheck({ failures: 3, threshold: 3, maintenance: true })).toEqual({
      go: false,
      reason: "maintenance mode holds automatic failover back",
    });
    expect(afterMissedCheck({ failures: 3, threshold: 3, maintenance: false })).toEqual({ go: true });
  });

  describe("the members confirm the loss of the recorded primary", () => {
    const primary = testNode("node1");
    const member = (p: NodePosition | null, name = p?.node.name ?? "node9", fenced = false) => ({
      node: testNode(name),
      position: p,
      fenced,
    });
    const judge = (...members: ReturnType<typeof member>[]) => replicasConfirmLoss({ primary, members, liveWithinMs: 3000 });

    test("when a replica answers and none still hears from the primary", () => {
      expect(judge(member(position("node2", { streamsFrom: null })), member(null, "node3"))).toEqual({ go: true });
      // Streaming from the primary, but silent past the detection window: a frozen primary.
      expect(judge(member(position("node2", { streamsFrom: "node1", silentMs: 5000 })))).toEqual({ go: true });
    });

    test("not while a replica still streams from it, nor when no replica answers", () => {
      expect(judge(member(position("node2", { streamsFrom: null })), member(position("node3", { streamsFrom: "node1" })))).toMatchObject({
        go: false,
        stale: false,
      });
      expect(judge(member(null, "node2"), member(null, "node3"))).toEqual({
        go: false,
        stale: false,
        reason: "primary unreachable, and so is every replica: no failover (nothing to promote)",
      });
      expect(judge()).toMatchObject({ go: false });
      // A fenced member that answers is no replica to promote.
      expect(judge(member(position("node2", { streamsFrom: null }), "node2", true))).toMatchObject({ go: false, stale: false });
    });

    test("never while another member is writable: the recorded state is stale", () => {
      const verdict = judge(member(position("node2", { primary: true })), member(position("node3", { streamsFrom: null })));
      expect(verdict).toMatchObject({ go: false, stale: true });
      expect(verdict.go === false && verdict.reason).toMatch(/^node2 is writable but node1 is the recorded primary/);
      // Even one the record calls fenced: a stale record may fence the real primary.
      expect(
        judge(member(position("node2", { primary: true }), "node2", true), member(position("node3", { streamsFrom: null }))),
      ).toMatchObject({
        go: false,
        stale: true,
      });
    });

    test("never while a replica streams from a live sender other than the recorded primary", () => {
      const verdict = judge(member(null, "node2"), member(position("node3", { streamsFrom: "node2" })));
      expect(verdict).toMatchObject({ go: false, stale: true });
      expect(verdict.go === false && verdict.reason).toMatch(/^node3 streams from 127\.0\.0\.1:5002, not from the recorded primary node1/);
      // A sender silent past the window is not live.
      expect(judge(member(position("node3", { streamsFrom: "node2", silentMs: 9000 })))).toEqual({ go: true });
    });

    describe("the primary the members run on is adopted when the record is stale", () => {
      const adopt = (...members: ReturnType<typeof member>[]) => primaryToAdopt({ recorded: primary, members, liveWithinMs: 3000 })?.name;

      test("one writable member that every other answering member streams from", () => {
        expect(
          adopt(member(null, "node1"), member(position("node2", { primary: true })), member(position("node3", { streamsFrom: "node2" }))),
        ).toBe("node2");
        // Recorded fenced (a stale record may fence the real primary): adopted all the same.
        expect(
          adopt(member(position("node2", { primary: true }), "node2", true), member(position("node3", { streamsFrom: "node2" }))),
        ).toBe("node2");
      });

      test("not without a witness, nor with one that does not follow it, nor with two writable members", () => {
        expect(adopt(member(position("node2", { primary: true })), member(null, "node3"))).toBeUndefined();
        expect(adopt(member(position("node2", { primary: true })), member(position("node3", { streamsFrom: null })))).toBeUndefined();
        expect(
          adopt(member(position("node2", { primary: true })), member(position("node3", { streamsFrom: "node2", silentMs: 9000 }))),
        ).toBeUndefined();
        expect(
          adopt(
            member(position("node2", { primary: true })),
            member(position("node3", { primary: true })),
            member(position("node4", { streamsFrom: "node2" })),
          ),
        ).toBeUndefined();
        // A member streaming from a third node: the picture is not one cluster on one primary.
        expect(
          adopt(
            member(position("node2", { primary: true })),
            member(position("node3", { streamsFrom: "node2" })),
            member(position("node4", { streamsFrom: "node5" })),
          ),
        ).toBeUndefined();
      });

      test("not a writable member left read-only (a fenced node started by hand)", () => {
        const readOnlyPrimary = { ...position("node2", { primary: true }), readOnly: true };
        expect(adopt(member(readOnlyPrimary), member(position("node3", { streamsFrom: "node2" })))).toBeUndefined();
      });
    });
  });

  test("cool-down: held off for a while after a try; an engine outage only until the engine answers", () => {
    const plain = holdOffAfter(new Error("boom"), 1000);
    expect(plain).toEqual({ until: 1000 + RETRY_AFTER_MS, untilDriverAnswers: false });
    expect(coolDown(plain, 1001)).toBe("cooling");
    expect(coolDown(plain, 1000 + RETRY_AFTER_MS)).toBe("clear");
    expect(coolDown(undefined, 0)).toBe("clear");
    const engine = holdOffAfter(new RelevoError(ErrorCode.DockerUnavailable, "engine gone"), 0);
    expect(coolDown(engine, 1)).toBe("ask-driver");
    expect(coolDown(holdOffAfter(null, 0), 1)).toBe("cooling");
  });

  const seen = (name: string, flushLsn: string | null, syncState: string | null = "async"): StandbySeen => ({
    name,
    state: "streaming",
    flushLsn,
    syncState,
  });

  test("the synchronous set keeps streaming members and admits standbys close enough; none in asynchronous mode", () => {
    const streaming = new Map([
      ["node3", seen("node3", "0/1000000")],
      ["node2", seen("node2", "0/1000000")],
      ["node4", seen("node4", null)],
    ]);
    const primaryLsn = `0/${(0x1000000 + JOIN_LAG_BYTES).toString(16).toUpperCase()}`;
    expect(desiredSynchronousSet({ synchronous: true, current: ["node5"], streaming, primaryLsn })).toEqual(["node2", "node3"]);
    const tooFar = `0/${(0x1000000 + JOIN_LAG_BYTES + 1).toString(16).toUpperCase()}`;
    expect(desiredSynchronousSet({ synchronous: true, current: ["node3"], streaming, primaryLsn: tooFar })).toEqual(["node3"]);
    expect(desiredSynchronousSet({ synchronous: false, current: ["node3"], streaming, primaryLsn })).toEqual([]);
  });

  test("a member the primary waits for gets a join point, and becomes eligible once flushed past it", () => {
    const state: ClusterState = {
      primary: "node1",
      epoch: 1,
      fenced: [],
      syncSet: ["node2", "node3", "node4"],
      eligible: ["node4"],
      joining: { node3: "0/3000000" },
      updatedAt: "2026-01-01T00:00:00Z",
    };
    const streaming = new Map([
      ["node2", seen("node2", "0/2000000", "quorum")],
      ["node3", seen("node3", "0/3000000", "quorum")],
      ["node4", seen("node4", "0/3000000", "quorum")],
    ]);
    expect(standbysToJoin(state, streaming)).toEqual(["node2"]);
    expect(standbysCaughtUp(state, streaming)).toEqual(["node3"]);
    expect(standbysCaughtUp(state, new Map([["node3", seen("node3", "0/2FFFFFF")]]))).toEqual([]);
    expect(standbysToJoin(state, new Map([["node2", seen("node2", "0/2000000", "async")]]))).toEqual([]);
  });

  test("join progress: a join point for those the primary now waits for, eligibility for those flushed past theirs", () => {
    const state: ClusterState = {
      primary: "node1",
      epoch: 3,
      fenced: [],
      syncSet: ["node2", "node3"],
      eligible: [],
      joining: { node3: "0/3000000" },
      updatedAt: "2026-01-01T00:00:00Z",
    };
    // One poll: node2 reported synchronous (join point: the LSN read after that report), node3 flushed past its point.
    const next = joinProgress(state, { joinNow: ["node2"], caughtUp: ["node3"], lsn: "0/3000100" });
    expect(next).toMatchObject({ joining: { node2: "0/3000100" }, eligible: ["node3"], epoch: 3 });
    // The next poll: node2 flushed that far, eligible at once; a name outside the set never becomes eligible.
    const streaming = new Map([["node2", seen("node2", "0/3000100", "quorum")]]);
    expect(standbysCaughtUp(next, streaming)).toEqual(["node2"]);
    expect(joinProgress(next, { joinNow: [], caughtUp: ["node2", "node9"], lsn: "0/3000200" })).toMatchObject({
      joining: {},
      eligible: ["node2", "node3"],
    });
  });

  test("failback waits for the preferred node to be in sync: eligible, or within the lag limit when asynchronous", () => {
    const base = {
      synchronous: true,
      preferred: "node1",
      eligible: ["node1"],
      standbys: [seen("node1", "0/1000000")],
      primaryLsn: "0/1000400",
      maximumLagBytes: 1024,
    };
    expect(preferredInSync(base)).toBe(true);
    expect(preferredInSync({ ...base, eligible: [] })).toBe(false);
    expect(preferredInSync({ ...base, synchronous: false, eligible: [] })).toBe(true);
    expect(preferredInSync({ ...base, synchronous: false, primaryLsn: "0/1000401" })).toBe(false);
    expect(preferredInSync({ ...base, standbys: [{ ...seen("node1", "0/1000000"), state: "catchup" }] })).toBe(false);
  });
});

describe("the monitor's check of the primary (pure)", () => {
  const row = { in_recovery: false, cluster_name: "main-node1", lsn: "0/5000000", sync_names: "", standbys: [] };

  test("only the member itself answers as the primary: another server on its port fails the check", () => {
    expect(primaryVerdict(row, testNode("node1"), "main")).toEqual({
      ok: true,
      lsn: "0/5000000",
      synchronousStandbyNames: "",
      standbys: [],
    });
    // A restored copy of node1, or another home's node1, on the dead primary's port.
    expect(primaryVerdict({ ...row, cluster_name: "main-restored-1" }, testNode("node1"), "main")).toEqual({
      ok: false,
      error: "what answers on node1's port is not node1 (cluster_name main-restored-1, not main-node1)",
    });
    expect(primaryVerdict(row, testNode("node1"), "other").ok).toBe(false);
    expect(primaryVerdict({ ...row, in_recovery: true }, testNode("node1"), "main")).toEqual({
      ok: false,
      error: "node1 is in recovery (not a primary)",
    });
  });
});

describe("an old primary that does not follow after a switchover (pure)", () => {
  test("the new primary's commits stop waiting for it after the detection window, not after the follow timeout and a restart", () => {
    expect(followWaits({ startedBefore: true, followTimeoutMs: 10000, detectionWindowMs: 3000 })).toEqual({
      beforeLeavingMs: 3000,
      afterLeavingMs: 7000,
    });
    expect(followWaits({ startedBefore: true, followTimeoutMs: 10000, detectionWindowMs: 30000 })).toEqual({
      beforeLeavingMs: 10000,
      afterLeavingMs: 0,
    });
    // Not started before the promotion: nothing to wait for (it was never in the set).
    expect(followWaits({ startedBefore: false, followTimeoutMs: 10000, detectionWindowMs: 3000 })).toEqual({
      beforeLeavingMs: 0,
      afterLeavingMs: 0,
    });
  });

  test("it leaves the eligible replicas first (never promoted without every acknowledged commit), the recorded set after", () => {
    const state: ClusterState = {
      primary: "node2",
      epoch: 4,
      fenced: [],
      syncSet: ["node1", "node3"],
      eligible: ["node1", "node3"],
      joining: { node1: "0/5000000" },
      updatedAt: "2026-01-01T00:00:00.000Z",
    };
    expect(outOfEligible(state, "node1")).toEqual({ ...state, eligible: ["node3"], joining: {} });
  });
});
