import { expect } from "@jest/globals";
import { holdAdvanceLsn, spoolDroppable, spoolFull } from "../../src/wal/hold-slot";
import { timelinePath } from "../../src/postgres/timelines";

/** The hold slot's pure decisions: how far it moves, what leaves the spool, when receiving stops. */
const seg = (n: number, timeline = 1) =>
  `${timeline.toString(16).toUpperCase().padStart(8, "0")}00000000${n.toString(16).toUpperCase().padStart(8, "0")}`;

describe("how far the hold slot moves (holdAdvanceLsn)", () => {
  const one = timelinePath(1, null);
  // Timeline 2 branched off timeline 1 inside segment 4: segments up to 3 are timeline 1's, 4 on are timeline 2's.
  const two = timelinePath(2, "1\t0/4000100\tno recovery target specified\n");

  test("to the end of the run of pushed segments from the one its restart_lsn lies in", () => {
    expect(holdAdvanceLsn("0/3000028", new Set([seg(3), seg(4), seg(6)]), one)).toBe("0/5000000");
  });

  test("not at all while that segment is not pushed (a later one pushed first changes nothing)", () => {
    expect(holdAdvanceLsn("0/3000028", new Set([seg(4), seg(5)]), one)).toBeNull();
    expect(holdAdvanceLsn("0/3000028", new Set(), one)).toBeNull();
  });

  test("across a timeline switch: each segment under the timeline the primary's history is on there", () => {
    expect(holdAdvanceLsn("0/3000000", new Set([seg(3, 1), seg(4, 2), "00000002.history"]), two)).toBe("0/5000000");
  });

  test("a segment of that number on another timeline (an old primary's branch not set aside yet) does not count", () => {
    // Review 23: the old primary's 1/4 and 1/5 in the index; the new primary's 2/4 and 2/5 not pushed.
    expect(holdAdvanceLsn("0/3000100", new Set([seg(3, 1), seg(4, 1), seg(5, 1)]), two)).toBe("0/4000000");
    expect(holdAdvanceLsn("0/4000000", new Set([seg(4, 1), seg(5, 1)]), two)).toBeNull();
  });
});

describe("what leaves the spool (spoolDroppable)", () => {
  const all = () => true;
  test("pushed, summarised segments wholly before the hold slot's restart; never the newest complete, a .partial or a history", () => {
    const names = [seg(3), seg(4), seg(5), `${seg(6)}.partial`, "00000002.history"];
    expect(spoolDroppable(names, { pushed: all, summarized: all, holdRestartLsn: "0/6000000" })).toEqual([seg(3), seg(4)]);
  });

  test("a segment the primary still keeps for the hold slot, not pushed, or not summarised stays", () => {
    const names = [seg(3), seg(4), seg(5), seg(6)];
    expect(spoolDroppable(names, { pushed: all, summarized: all, holdRestartLsn: "0/4000000" })).toEqual([seg(3)]);
    expect(spoolDroppable(names, { pushed: (name) => name !== seg(4), summarized: all, holdRestartLsn: "0/7000000" })).toEqual([
      seg(3),
      seg(5),
    ]);
    expect(spoolDroppable(names, { pushed: all, summarized: (name) => name === seg(5), holdRestartLsn: "0/7000000" })).toEqual([seg(5)]);
  });
});

describe("when the spool is full (spoolFull)", () => {
  const max = 100 * 1024 * 1024;
  test("full at the maximum; then until below 80 % of it (no stop and start at every segment)", () => {
    expect(spoolFull(false, max - 1, max)).toBe(false);
    expect(spoolFull(false, max, max)).toBe(true);
    expect(spoolFull(true, max * 0.9, max)).toBe(true);
    expect(spoolFull(true, max * 0.8, max)).toBe(true);
    expect(spoolFull(true, max * 0.8 - 1, max)).toBe(false);
    expect(spoolFull(false, max * 0.9, max)).toBe(false);
  });
});
