import { latestCheckpointLocation, stoppedAsStandby } from "../../src/postgres/control-data";
import { bytesBehind, lsnBytes, lsnFromNumber, lsnToNumber } from "../../src/postgres/lsn";

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
});
