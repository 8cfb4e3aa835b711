import { ErrorCode } from "../../src/errors";
import type { NodeFacts } from "../../src/postgres/node-facts";
import {
  chooseCandidate,
  chooseCandidateOrStoppedOldPrimary,
  type CandidateRules,
  type StoppedOldPrimary,
} from "../../src/failover/candidate";
import {
  fencedBySwitchover,
  leftAsStoppedOldPrimary,
  newPrimaryLossConfirmed,
  SWITCHOVER_MAX_LAG_BYTES,
  switchoverFenceReason,
  switchoverRefusal,
  takeoverPreparedReason,
} from "../../src/failover/switchover-rules";
import { lsnFromNumber } from "../../src/postgres/lsn";
import { position, testNode } from "../helpers/node-facts";

const from = testNode("node1");
const target = testNode("node2");
const primaryAt = (lsn: string): NodeFacts => ({ node: from, inRecovery: false, readOnly: false, lsn, timeline: 1, receiver: null });
/** node2 as a standby at `lsn`, its WAL receiver in `status` from `sender`. */
const standby = (lsn: string | null, options: { status?: string; sender?: typeof from } = {}): NodeFacts => ({
  node: target,
  inRecovery: true,
  readOnly: true,
  lsn,
  timeline: 1,
  receiver: { status: options.status ?? "streaming", senderHost: "127.0.0.1", senderPort: (options.sender ?? from).port, silentMs: 10 },
});
const refusal = (primaryFacts: NodeFacts | null, targetFacts: NodeFacts | null) =>
  switchoverRefusal({ kind: "switchover", from, target, primaryFacts, targetFacts });

describe("switchover preconditions (pure)", () => {
  const primaryLsn = lsnFromNumber(64 * 1024 * 1024);

  test("a target streaming from the primary within the limit may be switched over to", () => {
    expect(refusal(primaryAt(primaryLsn), standby(primaryLsn))).toBeNull();
    expect(refusal(primaryAt(primaryLsn), standby(lsnFromNumber(64 * 1024 * 1024 - SWITCHOVER_MAX_LAG_BYTES)))).toBeNull();
  });

  test("more than the limit behind: refused with PRECONDITION_FAILED, naming the lag", () => {
    const behind = refusal(primaryAt(primaryLsn), standby(lsnFromNumber(64 * 1024 * 1024 - SWITCHOVER_MAX_LAG_BYTES - 1)));
    expect(behind?.code).toBe(ErrorCode.PreconditionFailed);
    expect(behind?.message).toMatch(/node2 is 16777217 bytes behind/);
    // A receiver that has received nothing yet counts as behind from the start.
    expect(refusal(primaryAt(primaryLsn), standby(null))?.message).toMatch(/bytes behind/);
  });

  test("a target that does not stream from the primary is refused: stopped, not streaming, another upstream, or a primary", () => {
    const notStreaming = /node2 is not a replica streaming from node1/;
    expect(refusal(primaryAt(primaryLsn), null)?.message).toMatch(notStreaming);
    expect(refusal(primaryAt(primaryLsn), standby(primaryLsn, { status: "waiting" }))?.message).toMatch(notStreaming);
    expect(refusal(primaryAt(primaryLsn), standby(primaryLsn, { sender: testNode("node3") }))?.message).toMatch(notStreaming);
    expect(refusal(primaryAt(primaryLsn), { ...standby(primaryLsn), inRecovery: false })?.code).toBe(ErrorCode.PreconditionFailed);
  });

  test("a primary that does not answer as one: refused, pointing at failover", () => {
    expect(refusal(null, standby(primaryLsn))?.message).toMatch(/does not answer as a primary: use failover/);
    expect(refusal({ ...primaryAt(primaryLsn), inRecovery: true }, standby(primaryLsn))?.code).toBe(ErrorCode.PreconditionFailed);
  });
});

describe("a switchover's new primary lost with its old primary left stopped (pure)", () => {
  /**
   * node1, the old primary, stopped where its WAL ends at `lsn` (a stand-in: it does not answer); the
   * lost new primary's WAL read offline ending at `lostPrimaryWalEnd` (by default where it was promoted).
   */
  const stoppedOldPrimary = (lsn: string, lostPrimaryWalEnd: string | null = "0/5000200"): StoppedOldPrimary => ({
    facts: { node: from, inRecovery: false, readOnly: true, lsn, timeline: 1, receiver: null },
    lostPrimaryWalEnd,
  });
  const node3 = (lsn: string): NodeFacts => ({ ...standby(lsn), node: testNode("node3") });
  const rules: CandidateRules = {
    to: null,
    force: false,
    synchronous: false,
    eligible: [],
    // The lost new primary's LSN at its promotion, a little past the old primary's shutdown checkpoint.
    lastPrimaryLsn: "0/5000200",
    maximumLagBytes: 1048576,
    preferred: "node1",
  };

  test("asynchronous: no replica to promote, the stopped old primary is chosen within the lag limit, its loss in bytes", () => {
    expect(chooseCandidate([], rules)).toMatchObject({ ok: false });
    expect(chooseCandidateOrStoppedOldPrimary([], stoppedOldPrimary("0/5000100"), rules)).toEqual({ ok: true, node: from, lostBytes: 256 });
    // Under the same rules as any candidate: past the limit, or with the lag unknown, it is not promoted unforced.
    const tooFar = chooseCandidateOrStoppedOldPrimary([], stoppedOldPrimary("0/4000000"), rules);
    expect(tooFar).toEqual({ ok: false, reason: "no eligible replica: node1 was 16777728 bytes behind (limit 1048576)" });
    expect(chooseCandidateOrStoppedOldPrimary([], stoppedOldPrimary("0/5000100", null), { ...rules, lastPrimaryLsn: null })).toMatchObject({
      ok: false,
    });
    // No LSN seen, but the lost primary's WAL read: measured to its end.
    expect(chooseCandidateOrStoppedOldPrimary([], stoppedOldPrimary("0/5000100"), { ...rules, lastPrimaryLsn: null })).toMatchObject({
      ok: true,
      lostBytes: 256,
    });
    expect(chooseCandidateOrStoppedOldPrimary([], stoppedOldPrimary("0/4000000"), { ...rules, force: true })).toMatchObject({
      ok: true,
      node: from,
    });
  });

  test("asynchronous: its loss is measured to the end of the lost new primary's own WAL, not to the LSN seen at its promotion", () => {
    // node2 wrote 2 MiB after its promotion (recorded at 0/5000200): node1 lacks all of it, past the 1 MiB limit.
    const wroteSince = chooseCandidateOrStoppedOldPrimary([], stoppedOldPrimary("0/5000100", "0/5200200"), rules);
    expect(wroteSince).toEqual({ ok: false, reason: "no eligible replica: node1 was 2097408 bytes behind (limit 1048576)" });
    // Within the limit, the loss reported is to that end; an LSN seen past the WAL's end still counts.
    expect(chooseCandidateOrStoppedOldPrimary([], stoppedOldPrimary("0/5000100", "0/5000300"), rules)).toEqual({
      ok: true,
      node: from,
      lostBytes: 512,
    });
    expect(chooseCandidateOrStoppedOldPrimary([], stoppedOldPrimary("0/5000100", "0/5000000"), rules)).toMatchObject({ lostBytes: 256 });
    // A replica passed over and the old primary too far: both reasons.
    const node3Behind = chooseCandidateOrStoppedOldPrimary([node3("0/100")], stoppedOldPrimary("0/5000100", "0/5200200"), rules);
    expect(node3Behind.ok).toBe(false);
    expect(!node3Behind.ok && node3Behind.reason).toMatch(
      /^no eligible replica: node3 was \d+ bytes behind.*; node1 was 2097408 bytes behind/,
    );
    // That WAL unreadable: the loss is unknown, not eligible unless forced.
    expect(chooseCandidateOrStoppedOldPrimary([], stoppedOldPrimary("0/5000100", null), rules)).toEqual({
      ok: false,
      reason: "no eligible replica: node1's lag behind the old primary is unknown (the end of the lost primary's WAL cannot be read)",
    });
    expect(chooseCandidateOrStoppedOldPrimary([], stoppedOldPrimary("0/5000100", "0/5200200"), { ...rules, force: true })).toEqual({
      ok: true,
      node: from,
      lostBytes: 2097408,
    });
    expect(chooseCandidateOrStoppedOldPrimary([], stoppedOldPrimary("0/5000100", null), { ...rules, force: true })).toEqual({
      ok: true,
      node: from,
      lostBytes: null,
    });
  });

  test("synchronous: the stopped old primary only when recorded eligible (the new primary's commits waited for it), else only forced", () => {
    const synchronous = { ...rules, synchronous: true };
    const notEligible = chooseCandidateOrStoppedOldPrimary([], stoppedOldPrimary("0/5000100"), synchronous);
    expect(notEligible).toEqual({
      ok: false,
      reason: "no eligible replica: node1 is not known to hold every acknowledged commit (not an in-sync standby)",
    });
    expect(chooseCandidateOrStoppedOldPrimary([], stoppedOldPrimary("0/5000100"), { ...synchronous, eligible: ["node1"] })).toMatchObject({
      ok: true,
      node: from,
    });
    expect(chooseCandidateOrStoppedOldPrimary([], stoppedOldPrimary("0/5000100"), { ...synchronous, force: true })).toMatchObject({
      ok: true,
      node: from,
    });
  });

  test("a replica that may be promoted goes first; the old primary only when none may, or when asked for by name", () => {
    expect(chooseCandidateOrStoppedOldPrimary([node3("0/5000200")], stoppedOldPrimary("0/5000100"), rules)).toMatchObject({
      node: { name: "node3" },
    });
    expect(chooseCandidateOrStoppedOldPrimary([node3("0/100")], stoppedOldPrimary("0/5000100"), rules)).toMatchObject({
      ok: true,
      node: from,
    });
    expect(
      chooseCandidateOrStoppedOldPrimary([node3("0/5000200")], stoppedOldPrimary("0/5000100"), { ...rules, to: "node1" }),
    ).toMatchObject({
      ok: true,
      node: from,
    });
    expect(chooseCandidateOrStoppedOldPrimary([node3("0/100")], stoppedOldPrimary("0/5000100"), { ...rules, to: "node3" })).toMatchObject({
      ok: false,
    });
    expect(chooseCandidateOrStoppedOldPrimary([], null, rules)).toEqual({
      ok: false,
      reason: "no replica answers: nothing can be promoted",
    });
  });

  test("only a marker a switchover or failback wrote names its stopped old primary", () => {
    const id = "5c1e0f7e-3c1b-4a43-9d0e-2f1c7a9b8e01";
    expect(fencedBySwitchover(switchoverFenceReason("switchover", id))).toBe(true);
    expect(fencedBySwitchover(switchoverFenceReason("failback", id))).toBe(true);
    for (const other of [`failover ${id}`, "second primary (split brain)", "rejoining", "", null, undefined]) {
      expect(fencedBySwitchover(other)).toBe(false);
    }
  });

  test("a stopped node is the switchover's old primary when its marker says so and it stopped cleanly as a primary, or while a failover prepares it", () => {
    const id = "5c1e0f7e-3c1b-4a43-9d0e-2f1c7a9b8e01";
    const control = (state: string) => `Database cluster state:               ${state}\nLatest checkpoint's TimeLineID:       1\n`;
    const bySwitchover = switchoverFenceReason("switchover", id);
    expect(leftAsStoppedOldPrimary(bySwitchover, control("shut down"))).toBe(true);
    for (const state of ["in production", "shut down in recovery", "in archive recovery"]) {
      expect(leftAsStoppedOldPrimary(bySwitchover, control(state))).toBe(false);
    }
    // Being prepared for promotion when its start failed or the instance died: still it, stopped as a standby or not started at all.
    const prepared = takeoverPreparedReason(id);
    for (const state of ["shut down", "shut down in recovery", "in archive recovery"]) {
      expect(leftAsStoppedOldPrimary(prepared, control(state))).toBe(true);
    }
    // Promoted since, or a marker of another kind, or none: not it.
    expect(leftAsStoppedOldPrimary(prepared, control("in production"))).toBe(false);
    for (const other of [`failover ${id}`, "rejoining", "", null, undefined]) {
      expect(leftAsStoppedOldPrimary(other, control("shut down"))).toBe(false);
    }
  });

  test("the new primary is lost with nobody left to ask only when the old primary is stopped as the switchover left it and the new primary's server is down", () => {
    const nobodyAnswers = { go: false as const, stale: false, reason: "primary unreachable, and so is every replica" };
    const silent = [{ node: from, position: null, fenced: false }];
    const judge = (options: Partial<Parameters<typeof newPrimaryLossConfirmed>[0]>) =>
      newPrimaryLossConfirmed({
        verdict: nobodyAnswers,
        members: silent,
        stoppedOldPrimary: "node1",
        newPrimaryPhase: "stopped",
        ...options,
      });
    expect(judge({})).toBe(true);
    expect(judge({ newPrimaryPhase: "absent" })).toBe(true);
    // Frozen or running: it may answer again; a stopped old primary witnesses nothing.
    expect(judge({ newPrimaryPhase: "paused" })).toBe(false);
    expect(judge({ newPrimaryPhase: "running" })).toBe(false);
    expect(judge({ stoppedOldPrimary: null })).toBe(false);
    // A replica that answers decides, as for the monitor.
    const streaming = [{ node: testNode("node3"), position: position("node3", { streamsFrom: "node2" }), fenced: false }];
    expect(judge({ members: streaming, verdict: { go: false, stale: false, reason: "a replica still streams from it" } })).toBe(false);
    expect(judge({ verdict: { go: false, stale: true, reason: "node3 is writable" } })).toBe(false);
    expect(judge({ verdict: { go: true }, stoppedOldPrimary: null, newPrimaryPhase: "running" })).toBe(true);
  });
});
