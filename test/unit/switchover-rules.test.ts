import { ErrorCode } from "../../src/errors";
import type { NodeFacts } from "../../src/postgres/node-facts";
import { SWITCHOVER_MAX_LAG_BYTES, switchoverRefusal } from "../../src/failover/switchover-rules";
import { lsnFromNumber } from "../../src/postgres/lsn";
import { testNode } from "../helpers/node-facts";

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
