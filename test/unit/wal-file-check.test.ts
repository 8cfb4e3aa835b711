import { expect } from "@jest/globals";
import { timelinePath } from "../../src/postgres/timelines";
import { SEGMENT_SIZE } from "../../src/postgres/wal-names";
import { historyAgainstPrimary, HISTORY_MAX_BYTES, parseHistoryFile, segmentRefusal } from "../../src/wal/wal-file-check";
import { walSegment } from "../helpers/wal-segment";

/** What the WAL pusher checks of a received file before a put (review 21, M1): pure. */
const SEGMENT_2_5 = "000000020000000000000005";
const whole = { bytes: SEGMENT_SIZE, links: 1 };
const firstPage = (name: string, system = 7001n) => walSegment(name, system).subarray(0, 64);

describe("a received segment (segmentRefusal)", () => {
  test("its own page, one segment long, of the archive's cluster: accepted; a page of an ancestor timeline too", () => {
    expect(segmentRefusal(SEGMENT_2_5, whole, firstPage(SEGMENT_2_5), "7001")).toBeNull();
    expect(segmentRefusal(SEGMENT_2_5, whole, firstPage(SEGMENT_2_5), null)).toBeNull();
    // A timeline's first segment begins with its parent's pages (copied at the promotion).
    expect(segmentRefusal(SEGMENT_2_5, whole, firstPage("000000010000000000000005"), "7001")).toBeNull();
  });

  test("refused: another size, a hard link, another segment's or a later timeline's page, another cluster, not a v15 long header", () => {
    expect(segmentRefusal(SEGMENT_2_5, { bytes: 10, links: 1 }, firstPage(SEGMENT_2_5), null)).toMatch(/10 bytes/);
    expect(segmentRefusal(SEGMENT_2_5, { bytes: SEGMENT_SIZE, links: 2 }, firstPage(SEGMENT_2_5), null)).toMatch(/2 hard links/);
    expect(segmentRefusal(SEGMENT_2_5, whole, firstPage("000000020000000000000004"), null)).toMatch(/not where segment/);
    expect(segmentRefusal(SEGMENT_2_5, whole, firstPage("000000030000000000000005"), null)).toMatch(/timeline 3, past the name's 2/);
    expect(segmentRefusal(SEGMENT_2_5, whole, firstPage(SEGMENT_2_5, 9n), "7001")).toMatch(/system identifier 9 is not the archive's 7001/);
    const otherVersion = Buffer.from(firstPage(SEGMENT_2_5));
    otherVersion.writeUInt16LE(0xd10d, 0);
    expect(segmentRefusal(SEGMENT_2_5, whole, otherVersion, null)).toMatch(/magic is 0xd10d/);
    const shortHeader = Buffer.from(firstPage(SEGMENT_2_5));
    shortHeader.writeUInt16LE(0, 2);
    expect(segmentRefusal(SEGMENT_2_5, whole, shortHeader, null)).toMatch(/no long header/);
    expect(segmentRefusal(SEGMENT_2_5, whole, Buffer.alloc(20), null)).toMatch(/cut short/);
  });
});

describe("a received history (parseHistoryFile)", () => {
  const facts = (content: string) => ({ bytes: Buffer.byteLength(content), links: 1 });
  const parse = (name: string, content: string) => parseHistoryFile(name, facts(content), Buffer.from(content));

  test("PostgreSQL's lines, comments and blank lines skipped: its ancestors", () => {
    const content = "# made by hand\n1\t0/3000060\tno recovery target specified\n\n2\t0/5000028\tbefore 2026-01-01 00:00:00+00\n";
    expect(parse("00000003.history", content)).toEqual({
      ok: true,
      timeline: 3,
      ancestors: [
        { timeline: 1, switchLsn: "0/3000060" },
        { timeline: 2, switchLsn: "0/5000028" },
      ],
    });
  });

  test("refused: not a line of its form, timelines not increasing or not below the name's, no parent, too large, linked", () => {
    expect(parse("00000003.history", "secret=hunter2\n")).toEqual({ ok: false, reason: 'line 1 is not "timeline<TAB>LSN<TAB>reason"' });
    expect(parse("00000003.history", "2\t0/5000000\tx\n1\t0/6000000\tx\n")).toMatchObject({ ok: false, reason: /does not follow 2/ });
    expect(parse("00000003.history", "1\t0/5000000\tx\n3\t0/6000000\tx\n")).toMatchObject({
      ok: false,
      reason: /not below the file's own 3/,
    });
    expect(parse("00000003.history", "# nothing\n")).toMatchObject({ ok: false, reason: "it names no parent timeline" });
    expect(parse("00000001.history", "")).toMatchObject({ ok: false, reason: "timeline 1 has no history file" });
    expect(parseHistoryFile("00000002.history", { bytes: HISTORY_MAX_BYTES + 1, links: 1 }, Buffer.from("1\t0/1\tx\n"))).toMatchObject({
      ok: false,
      reason: /over a history's/,
    });
    expect(parseHistoryFile("00000002.history", { bytes: 8, links: 2 }, Buffer.from("1\t0/1\tx\n"))).toMatchObject({ ok: false });
  });
});

describe("a history against the primary's (historyAgainstPrimary)", () => {
  const primary = timelinePath(3, "1\t0/3000060\tx\n2\t0/5000028\tx\n");
  const history = (timeline: number, ancestors: Array<[number, string]>) => ({
    timeline,
    ancestors: ancestors.map(([parent, switchLsn]) => ({ timeline: parent, switchLsn })),
  });

  test("on the primary's path by the same ancestors and switch points: pushed, whatever the LSN's spelling", () => {
    expect(
      historyAgainstPrimary(
        history(3, [
          [1, "0/3000060"],
          [2, "0/5000028"],
        ]),
        primary,
      ),
    ).toBe("push");
    expect(historyAgainstPrimary(history(2, [[1, "00/03000060"]]), primary)).toBe("push");
  });

  test("no primary known, or a timeline past its own or off its path: held (a planted future history is never put)", () => {
    expect(
      historyAgainstPrimary(
        history(3, [
          [1, "0/3000060"],
          [2, "0/5000028"],
        ]),
        null,
      ),
    ).toBe("hold");
    expect(
      historyAgainstPrimary(
        history(4, [
          [1, "0/3000060"],
          [2, "0/5000028"],
          [3, "0/7000000"],
        ]),
        primary,
      ),
    ).toBe("hold");
  });

  test("the primary's timeline reached by another path: refused", () => {
    expect(
      historyAgainstPrimary(
        history(3, [
          [1, "0/3000060"],
          [2, "0/5800000"],
        ]),
        primary,
      ),
    ).toMatchObject({ refused: /timeline 3/ });
    expect(historyAgainstPrimary(history(3, [[1, "0/3000060"]]), primary)).toMatchObject({ refused: /timeline 3/ });
  });
});
