import { expect } from "@jest/globals";
import { heldBackTooLong } from "../../src/backup/backup-lock";
import {
  breakerIsStale,
  decideOnHeldLock,
  holderOnThisHost,
  nextSighting,
  type HeldLockObservation,
} from "../../src/storage/lock-decision";

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

  test("a sighting of the same holder with an untouched file keeps its first-seen time; a touch or a new holder starts it again", () => {
    const first = nextSighting(undefined, { token: "a", mtimeMs: 5 }, 1000);
    expect(first).toEqual({ token: "a", mtimeMs: 5, sinceMs: 1000 });
    expect(nextSighting(first, { token: "a", mtimeMs: 5 }, 40_000)).toBe(first);
    expect(nextSighting(first, { token: "a", mtimeMs: 6 }, 40_000).sinceMs).toBe(40_000);
    expect(nextSighting(first, { token: "b", mtimeMs: 5 }, 40_000).sinceMs).toBe(40_000);
  });

  test("a holder's pid is checked here only when its host name, boot and pid namespace are this process's", () => {
    const me = { host: "db1", hostId: "boot-1/pid:[4026531836]" };
    expect(holderOnThisHost(me, { host: "db1", hostId: "boot-1/pid:[4026531836]" })).toBe(true);
    expect(holderOnThisHost(me, { host: "db1", hostId: "boot-1/pid:[4026532001]" })).toBe(false); // another container
    expect(holderOnThisHost(me, { host: "db1", hostId: "boot-2/pid:[4026531836]" })).toBe(false); // rebooted since
    expect(holderOnThisHost(me, { host: "db2", hostId: "boot-1/pid:[4026531836]" })).toBe(false);
    expect(holderOnThisHost(me, { host: "db1" })).toBe(false); // recorded no host id
  });
});

describe("expiry and a backup held back", () => {
  test("reported once its lock has been held for longer than any verification may wait for it (35 min)", () => {
    const now = Date.parse("2026-01-01T12:00:00Z");
    expect(heldBackTooLong("2026-01-01T11:30:00Z", now)).toBe(false);
    expect(heldBackTooLong("2026-01-01T11:24:00Z", now)).toBe(true);
    expect(heldBackTooLong("", now)).toBe(false); // an unreadable lock file says no time
  });
});
