import { latestCheckpointLocation, stoppedAsStandby } from "../../src/postgres/control-data";
import { bytesBehind, lsnBytes, lsnFromNumber, lsnToNumber } from "../../src/postgres/lsn";
import { walSegmentSystemIdentifier } from "../../src/postgres/wal-page-header";
import { endOfWalIn } from "../../src/postgres/wal-end";
import { filesOfTimelinesFrom, historiesToCopy, timelineAfterPromotion } from "../../src/postgres/timelines";

describe("PostgreSQL facts (pure)", () => {
  test("LSNs convert to byte positions and back, across the 32-bit boundary", () => {
    expect(lsnToNumber("0/FFFFFFFF")).toBe(2 ** 32 - 1);
    expect(lsnToNumber("1/0")).toBe(2 ** 32);
    expect(lsnFromNumber(2 ** 32 + 0x16b374d8)).toBe("1/16B374D8");
    for (const lsn of ["0/0", "0/3000028", "16/B374D848", "FFFF/FFFFFFFF"]) expect(lsnFromNumber(lsnToNumber(lsn))).toBe(lsn);
    expect(lsnBytes(null)).toBeNull();
    expect(bytesBehind("1/0", "0/FFFFFF00")).toBe(256);
    expect(bytesBehind("0/10", "0/20")).toBe(0);
  });

  test("pg_controldata: the latest checkpoint and whether the node stopped as a standby", () => {
    const standby = ["Database cluster state:               shut down in recovery", "Latest checkpoint location:           0/5000060"].join(
      "\n",
    );
    const primary = ["Database cluster state:               shut down", "Latest checkpoint location:           1/A0000028"].join("\n");
    expect(latestCheckpointLocation(standby)).toBe("0/5000060");
    expect(latestCheckpointLocation(primary)).toBe("1/A0000028");
    expect(latestCheckpointLocation("")).toBeNull();
    expect(stoppedAsStandby(standby)).toBe(true);
    expect(stoppedAsStandby("Database cluster state:               in archive recovery")).toBe(true);
    expect(stoppedAsStandby(primary)).toBe(false);
    expect(stoppedAsStandby("")).toBe(false);
  });

  test("pg_waldump's last word: where a stopped node's WAL ends", () => {
    const torn = "pg_waldump: error: error in WAL record at 0/1559F90: invalid record length at 0/1559FC8: wanted 24, got 0\n";
    expect(endOfWalIn(torn, "0/1000028")).toBe("0/1559FC8");
    // Ending on a page whose header is not written names only the last record read.
    const zeroed =
      "pg_waldump: error: error in WAL record at 0/3FFFF80: invalid magic number 0000 in log segment 000000010000000000000004, offset 0";
    expect(endOfWalIn(zeroed, "0/3000028")).toBe("0/3FFFF80");
    // Never before where the reading started; nothing said, nothing known.
    expect(endOfWalIn("pg_waldump: error: error in WAL record at 0/10: invalid record length at 0/20: wanted 24, got 0", "0/100")).toBe(
      "0/100",
    );
    expect(endOfWalIn('pg_waldump: error: could not find file "000000010000000000000009"', "0/9000028")).toBeNull();
  });

  test("a WAL segment's first page names its cluster's system identifier; zeros or a short page name none", () => {
    // The first 40 bytes of 000000010000000000000001 just after an initdb whose
    // pg_controldata printed "Database system identifier: 7716129010877082573".
    const header = Buffer.from("10d102000100000000000001000000000000000000000000cd2b6a1e7432156b0000000100200000", "hex");
    expect(walSegmentSystemIdentifier(header)).toBe("7716129010877082573");
    // A segment pg_receivewal preallocated and has not written yet.
    expect(walSegmentSystemIdentifier(Buffer.alloc(40))).toBeNull();
    expect(walSegmentSystemIdentifier(header.subarray(0, 30))).toBeNull();
    // A page without the long header (any page but a segment's first).
    const shortHeader = Buffer.from(header);
    shortHeader.writeUInt16LE(0, 2);
    expect(walSegmentSystemIdentifier(shortHeader)).toBeNull();
  });
});

describe("a stopped old primary's timeline against the archive's (pure)", () => {
  test("every history above its own, from the lost node or else the archive: an abandoned branch's, found only in the archive, is copied too", () => {
    // The lost node chose 4 because 3 (an abandoned branch) was in the archive; its pg_wal holds 2 and 4, not 3.
    const copies = historiesToCopy({
      own: 2,
      lostNode: ["pg_wal/00000002.history", "pg_wal/00000004.history", "pg_wal/000000040000000000000007"],
      archive: ["00000002.history", "00000003.history", "00000004.history", "000000030000000000000006", "00000001.history"],
    });
    expect(copies).toEqual([
      { timeline: 3, from: "archive" },
      { timeline: 4, from: "lost-node" },
    ]);
    // Then it picks 5, above every timeline made before; with the lost node's alone it would have picked 3 again.
    expect(
      timelineAfterPromotion(
        2,
        copies.map((copy) => copy.timeline),
      ),
    ).toBe(5);
    expect(timelineAfterPromotion(2, [4])).toBe(3);
    expect(historiesToCopy({ own: 4, lostNode: [], archive: ["00000003.history"] })).toEqual([]);
  });

  test("after the promotion, the archive's files of its timeline and above (read before it) are another branch's", () => {
    const archive = [
      "000000020000000000000005",
      "00000003.history",
      "000000030000000000000006",
      "000000030000000000000007.partial",
      "00000004.history",
      "archive-identity.json",
      "diverged",
    ];
    expect(filesOfTimelinesFrom(archive, 3)).toEqual([
      "00000003.history",
      "000000030000000000000006",
      "000000030000000000000007.partial",
      "00000004.history",
    ]);
    expect(filesOfTimelinesFrom(archive, 5)).toEqual([]);
  });
});
