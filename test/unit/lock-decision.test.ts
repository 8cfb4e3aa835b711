import { expect } from "@jest/globals";
import { breakerIsStale, decideOnHeldLock, type HeldLockObservation } from "../../src/storage/lock-decision";

const base: HeldLockObservation = {
  sameHost: true,
  processAlive: true,
  unchangedForMs: 0,
  holderRefreshMs: 10_000,
  waitedMs: 0,
  waitMs: 60_000,
};

describe("what a process that wants a lock does about the one it found", () => {
  test("a holder on this host: broken once its process is gone, however fresh its file", () => {
    expect(decideOnHeldLock({ ...base, processAlive: false })).toBe("break");
    expect(decideOnHeldLock({ ...base, processAlive: true, unchangedForMs: 10 * 60_000 })).toBe("wait");
  });

  test("a holder on another host: gone only after three of its refresh intervals without a touch", () => {
    const remote = { ...base, sameHost: false, processAlive: false };
    expect(decideOnHeldLock({ ...remote, unchangedForMs: 30_000 })).toBe("wait");
    expect(decideOnHeldLock({ ...remote, unchangedForMs: 30_001 })).toBe("break");
    expect(decideOnHeldLock({ ...remote, holderRefreshMs: 100, unchangedForMs: 301 })).toBe("break");
  });

  test("a live holder past the deadline: give up; waitMs 0 gives up at the first look", () => {
    expect(decideOnHeldLock({ ...base, waitedMs: 60_000 })).toBe("give-up");
    expect(decideOnHeldLock({ ...base, waitMs: 0 })).toBe("give-up");
    // A dead holder is broken even by one that would not wait.
    expect(decideOnHeldLock({ ...base, waitMs: 0, processAlive: false })).toBe("break");
  });

  test("a breaker file older than ten seconds is a crashed breaker's", () => {
    expect(breakerIsStale(10_000)).toBe(false);
    expect(breakerIsStale(10_001)).toBe(true);
  });
});
