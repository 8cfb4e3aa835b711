import { expect } from "@jest/globals";
import { leftoverScratch } from "../../src/wal/fetched-segments";
import { pendingSummaries, possiblyIncomplete, summarySuccessor } from "../../src/wal/summary-plan";

const S_1_3 = "000000010000000000000003";
const S_1_4 = "000000010000000000000004";
const S_1_5 = "000000010000000000000005";
const S_2_5 = "000000020000000000000005";
const S_2_6 = "000000020000000000000006";
const S_3_6 = "000000030000000000000006";

describe("which segments the WAL summariser reads, and with what", () => {
  test("the successor: the same timeline's, else the one being received, else the earliest later timeline's, else none", () => {
    expect(summarySuccessor(1, 3, new Set([S_1_3, S_1_4, S_2_5]))).toBe(S_1_4);
    expect(summarySuccessor(1, 4, new Set([S_1_4, `${S_1_5}.partial`, S_2_5]))).toBe(`${S_1_5}.partial`);
    expect(summarySuccessor(1, 4, new Set([S_1_4, S_3_6, S_2_5, "000000030000000000000005"]))).toBe(S_2_5);
    expect(summarySuccessor(1, 5, new Set([S_1_5]))).toBeNull();
  });

  test("every unsummarised segment is summarised, whether the spool or only the archive has it (names are both)", () => {
    // 3 and 4 were pushed and the spool lost them: their names come from the archive alone, and are read from it.
    const jobs = pendingSummaries({ names: [S_1_3, S_1_4, S_1_5], summarized: new Set(), incomplete: new Map() });
    expect(jobs).toEqual([
      { name: S_1_3, timeline: 1, segment: 3, successor: S_1_4, final: true },
      { name: S_1_4, timeline: 1, segment: 4, successor: S_1_5, final: true },
    ]);
  });

  test("the newest timeline's newest segment waits for its successor to be received; an older timeline's last is final", () => {
    const names = [S_1_4, S_1_5, S_2_5, S_2_6, `${"000000020000000000000007"}.partial`];
    const jobs = pendingSummaries({ names, summarized: new Set([S_1_4, S_2_5]), incomplete: new Map() });
    expect(jobs).toEqual([
      // Timeline 1's last: read on into timeline 2's 6 (the same records up to the branch).
      { name: S_1_5, timeline: 1, segment: 5, successor: S_2_6, final: true },
      { name: S_2_6, timeline: 2, segment: 6, successor: "000000020000000000000007.partial", final: false },
    ]);
  });

  test("a stored incomplete summary is retried when its successor changed, once per process when unknown, else not", () => {
    const names = [S_1_5, S_2_6];
    const summarized = new Set([S_1_5]);
    // Last read with no successor; timeline 2's 6 has arrived since: retried, reading it.
    expect(pendingSummaries({ names, summarized, incomplete: new Map([[S_1_5, null]]) })).toEqual([
      { name: S_1_5, timeline: 1, segment: 5, successor: S_2_6, final: true },
    ]);
    // Last read with that very successor: nothing new, not retried at every pass.
    expect(pendingSummaries({ names, summarized, incomplete: new Map([[S_1_5, S_2_6]]) })).toEqual([]);
    // Stored incomplete by an earlier process: tried once by this one.
    expect(pendingSummaries({ names, summarized, incomplete: new Map([[S_1_5, undefined]]) })).toHaveLength(1);
    // Complete (not in the map): never again.
    expect(pendingSummaries({ names, summarized, incomplete: new Map() })).toEqual([]);
  });

  test("only summaries of segments without their own timeline's successor may be incomplete, and are read to know", () => {
    const names = [S_1_3, S_1_4, S_1_5, S_2_5, "00000002.history"];
    expect(possiblyIncomplete(names, new Set([S_1_3, S_1_5, S_2_5]))).toEqual([S_1_5, S_2_5]);
  });

  test("scratch left by processes that are gone is removed; a live process's and anything else is kept", () => {
    const names = [`wal-fetch-101-ab12cd34-${S_1_3}`, "waldump-101-ab12cd34", `wal-fetch-202-00ff00ff-${S_1_4}`, "waldump-202-1", "other"];
    expect(leftoverScratch(names, (pid) => pid === 202)).toEqual([`wal-fetch-101-ab12cd34-${S_1_3}`, "waldump-101-ab12cd34"]);
  });
});
