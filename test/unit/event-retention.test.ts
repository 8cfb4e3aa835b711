import { expect } from "@jest/globals";
import { retentionCutoff } from "../../src/events/event-retention";

describe("the events table's retention cut (pure)", () => {
  const day = 86_400_000;
  const now = new Date("2026-12-07T12:00:00Z");
  const ago = (ms: number) => new Date(now.getTime() - ms);

  test("the retention before now, when the newest event is now's", () => {
    expect(retentionCutoff({ now, retentionMs: 30 * day, newestEvent: now })).toEqual(ago(30 * day));
  });

  test("a cluster quiet for 10 days keeps the retention before its newest event (10 days more)", () => {
    expect(retentionCutoff({ now, retentionMs: 30 * day, newestEvent: ago(10 * day) })).toEqual(ago(40 * day));
  });

  test("a wall clock stepped forward past the retention cuts no later than the retention before the newest event", () => {
    const stepped = new Date(now.getTime() + 400 * day);
    expect(retentionCutoff({ now: stepped, retentionMs: 30 * day, newestEvent: ago(5000) })).toEqual(ago(30 * day + 5000));
  });

  test("no events: nothing to cut", () => {
    expect(retentionCutoff({ now, retentionMs: 30 * day, newestEvent: null })).toBeNull();
  });
});
