import { expect } from "@jest/globals";
import { RefusedWalFiles } from "../../src/wal/refused-wal-files";

/** The pusher's refusals: skipped while unchanged and backing off, reported once, logged now and then (pure). */
describe("refused WAL files", () => {
  const options = { retryMinMs: 1000, retryMaxMs: 4000, logEveryMs: 10_000 };

  test("reported once; skipped while unchanged until the back-off (doubling, bounded) is over; at once when changed", () => {
    const refused = new RefusedWalFiles(options);
    expect(refused.refuse("a", "cut short", "print-1", 0)).toEqual({ report: true, log: true });
    expect(refused.skips("a", "print-1", 999)).toBe(true);
    expect(refused.skips("a", "print-2", 999)).toBe(false);
    expect(refused.skips("a", "print-1", 1000)).toBe(false);
    expect(refused.refuse("a", "cut short", "print-1", 1000)).toEqual({ report: false, log: false });
    expect(refused.skips("a", "print-1", 2999)).toBe(true);
    expect(refused.skips("a", "print-1", 3000)).toBe(false);
    refused.refuse("a", "cut short", "print-1", 3000);
    refused.refuse("a", "cut short", "print-1", 7000);
    // Bounded by retryMaxMs.
    expect(refused.skips("a", "print-1", 10_999)).toBe(true);
    expect(refused.skips("a", "print-1", 11_000)).toBe(false);
    // Logged again once logEveryMs passed, or at once for another reason.
    expect(refused.refuse("a", "cut short", "print-1", 11_000)).toEqual({ report: false, log: true });
    expect(refused.refuse("a", "another reason", "print-1", 11_001)).toEqual({ report: false, log: true });
  });

  test("forgotten when gone from the spool or passed; listed oldest first", () => {
    const refused = new RefusedWalFiles(options);
    refused.refuse("b", "why b", null, 5);
    refused.refuse("a", "why a", null, 7);
    expect(refused.list()).toEqual([
      { name: "b", reason: "why b", since: 5 },
      { name: "a", reason: "why a", since: 7 },
    ]);
    expect(refused.present(["a", "c"])).toEqual(["a"]);
    expect(refused.clear("a")).toBe(true);
    expect(refused.clear("a")).toBe(false);
    expect(refused.list()).toEqual([]);
    expect(refused.refuse("a", "why a", null, 9).report).toBe(true);
  });
});
