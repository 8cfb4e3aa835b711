import { describe, expect, test } from "@jest/globals";
import { branchConflict, promotionHazard } from "../../src/failover/promotion-guard";
import { historyTimelines, isAncestorPath, newestOnEveryHistory, reachedTimeline } from "../../src/postgres/timelines";
import { position, testNode } from "../helpers/node-facts";

const options = { replacing: testNode("node1"), liveWithinMs: 3000 };
const timeline2 = [
  { timeline: 1, switchLsn: "0/3000000" },
  { timeline: 2, switchLsn: null },
];
// Another promotion from timeline 1, at another LSN, also picked timeline 2.
const otherTimeline2 = [
  { timeline: 1, switchLsn: "0/3800000" },
  { timeline: 2, switchLsn: null },
];
const timeline3 = [
  { timeline: 1, switchLsn: "0/3000000" },
  { timeline: 2, switchLsn: "0/4000000" },
  { timeline: 3, switchLsn: null },
];

describe("promotion guard (pure)", () => {
  test("an ordinary failover: the old primary dead, the others replicas on the candidate's history", () => {
    const candidate = position("node2", { streamsFrom: null, history: timeline2 });
    const members = [candidate, position("node3", { streamsFrom: null, history: timeline2 }), position("node4", { streamsFrom: null })];
    expect(promotionHazard(candidate, members, options)).toBeNull();
  });

  test("the primary being replaced may be writable (fenced before the promotion) and the candidate may still stream from it", () => {
    const candidate = position("node2", { streamsFrom: "node1" });
    expect(promotionHazard(candidate, [candidate, position("node1", { primary: true })], options)).toBeNull();
  });

  test("refused while another member is writable", () => {
    const candidate = position("node3", { streamsFrom: null });
    expect(promotionHazard(candidate, [candidate, position("node2", { primary: true, history: timeline2 })], options)).toBe(
      "node2 is writable (a primary on timeline 2), so promoting node3 would make a second primary",
    );
  });

  test("refused while the candidate hears from a live sender other than the primary being replaced", () => {
    const candidate = position("node3", { streamsFrom: "node2", history: timeline2 });
    const members = [candidate, position("node2", { streamsFrom: null, history: timeline2 })];
    expect(promotionHazard(candidate, members, options)).toBe(
      "node3 still streams from a live sender (node2): its upstream is not the primary being replaced",
    );
    // A sender that is no member at all, too.
    const stranger = { ...candidate, receiver: { ...candidate.receiver!, senderPort: 7777 } };
    expect(promotionHazard(stranger, [stranger], options)).toMatch(/127\.0\.0\.1:7777, not a member/);
    // A sender silent past the window is not live.
    const silent = position("node3", { streamsFrom: "node2", silentMs: 10000, history: timeline2 });
    expect(promotionHazard(silent, [silent], options)).toBeNull();
  });

  test("refused while a member is on a higher timeline, or on another history of the same number", () => {
    const candidate = position("node3", { streamsFrom: null, history: timeline2 });
    expect(promotionHazard(candidate, [candidate, position("node2", { streamsFrom: null, history: timeline3 })], options)).toMatch(
      /^node2 is on timeline 3, past node3's 2/,
    );
    expect(promotionHazard(candidate, [candidate, position("node2", { streamsFrom: null, history: otherTimeline2 })], options)).toMatch(
      /^node2 is on timeline 2 of another history than node3's/,
    );
  });

  test("histories compare by their steps, not their numbers", () => {
    expect(isAncestorPath(timeline2, timeline3)).toBe(true);
    expect(isAncestorPath([{ timeline: 1, switchLsn: null }], timeline3)).toBe(true);
    expect(isAncestorPath(timeline3, timeline2)).toBe(false);
    expect(isAncestorPath(otherTimeline2, timeline3)).toBe(false);
    expect(isAncestorPath(timeline2, timeline2)).toBe(true);
    // A member on a lower timeline of the candidate's own history is no conflict; unknown histories fall back to numbers.
    expect(branchConflict(position("node2", { history: timeline2 }), position("node3", { history: timeline3 }))).toBeNull();
    expect(
      branchConflict({ ...position("node2", { history: otherTimeline2 }), history: null }, position("node3", { history: timeline2 })),
    ).toBeNull();
    expect(
      branchConflict({ ...position("node2", { history: timeline3 }), history: null }, position("node3", { history: timeline2 })),
    ).not.toBeNull();
  });

  test("of stopped would-be primaries, the one whose history holds every other's starts first; none when they diverged", () => {
    const one = [{ timeline: 1, switchLsn: null }];
    expect(
      newestOnEveryHistory([
        { key: "node1", path: one },
        { key: "node2", path: timeline2 },
        { key: "node3", path: timeline3 },
      ]),
    ).toBe("node3");
    expect(
      newestOnEveryHistory([
        { key: "node2", path: timeline2 },
        { key: "node4", path: otherTimeline2 },
      ]),
    ).toBeNull();
    expect(
      historyTimelines(["pg_wal/00000002.history", "pg_wal/000000010000000000000003", "pg_wal/0000000A.history", "x.history"]),
    ).toEqual([2, 10]);
  });

  test("a standby whose restartpoint lags a switch it followed stands on the timeline it reached, and does not block a failover", () => {
    // After a failback to timeline 3: node2, the old primary restarted as a standby, still has timeline 2 in its control file; node3 made a restartpoint on 3.
    const histories = [timeline2, timeline3];
    const followed = reachedTimeline({ restartpointTimeline: 2, lsn: "0/5000000", histories, segmentTimelines: new Set([2, 3]) });
    expect(followed).toEqual({ timeline: 3, history: timeline3 });
    const candidate = { ...position("node2", { streamsFrom: null, history: timeline3 }), timeline: followed.timeline };
    const members = [candidate, position("node3", { streamsFrom: null, history: timeline3 })];
    expect(promotionHazard(candidate, members, options)).toBeNull();
    // Not before its WAL reached the branch point; not a branch it refused (its history fetched, none of its WAL); not a branch off another timeline.
    const at = (lsn: string, segments: number[], restartpointTimeline = 2): number =>
      reachedTimeline({ restartpointTimeline, lsn, histories, segmentTimelines: new Set(segments) }).timeline;
    expect(at("0/3F00000", [2, 3])).toBe(2);
    expect(at("0/5000000", [2])).toBe(2);
    expect(
      reachedTimeline({
        restartpointTimeline: 2,
        lsn: "0/5000000",
        histories: [
          [
            { timeline: 1, switchLsn: "0/3000000" },
            { timeline: 3, switchLsn: null },
          ],
        ],
        segmentTimelines: new Set([2, 3]),
      }).timeline,
    ).toBe(2);
    expect(at("0/5000000", [1, 2, 3], 1)).toBe(3);
    expect(reachedTimeline({ restartpointTimeline: 2, lsn: null, histories, segmentTimelines: new Set([3]) }).timeline).toBe(2);
  });
});
