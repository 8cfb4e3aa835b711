import { expect } from "@jest/globals";
import { holdAdvanceLsn, spoolDroppable, spoolFull } from "../../src/wal/hold-slot";

/** The hold slot's pure decisions: how far it moves, what leaves the spool, when receiving stops. */
const seg = (n: number, timeline = 1) =>
  `${timeline.toString(16).toUpperCase().padStart(8, "0")}00000000${n.toString(16).toUpperCase().padStart(8, "0")}`;

describe("how far the hold slot moves (holdAdvanceLsn)", () => {
  test("to the end of the run of pushed segments from the one its restart_lsn lies in", () => {
    expect(holdAdvanceLsn("0/3000028", [seg(3), seg(4), seg(6)])).toBe("0/5000000");
  });

  test("not at all while that segment is not pushed (a later one pushed first changes nothing)", () => {
    expect(holdAdvanceLsn("0/3000028", [seg(4), seg(5)])).toBeNull();
    expect(holdAdvanceLsn("0/3000028", [])).toBeNull();
  });

  test("across a timeline switch: a segment held on either timeline counts", () => {
    expect(holdAdvanceLsn("0/3000000", [seg(3, 1), seg(4, 2), "00000002.history"])).toBe("0/5000000");
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
