import { expect } from "@jest/globals";
import { restoreOrder, unionHoldings, type RepositoryHoldings } from "../../src/restore/repository-order";
import type { ArchivedWalState } from "../../src/restore/recovery-window";
import { manifest } from "../helpers/manifest-fixture";

/** Segments 1..n of timeline 1, but the ones left out. */
const archive = (last: number, missing: readonly number[] = []): ArchivedWalState => ({
  segments: Array.from({ length: last }, (_, i) => i + 1)
    .filter((segment) => !missing.includes(segment))
    .map((segment) => ({ timeline: 1, segment })),
  reachedAt: "2026-11-05T00:00:00.000Z",
});

const full = manifest("F1");
const diff = manifest("D2", { type: "differential", reference: "F1", startLsn: "0/3000028", stopLsn: "0/3000100" });

const holding = (index: number, manifests = [full, diff], wal = archive(6)): RepositoryHoldings => ({ index, manifests, archive: wal });

describe("the order a restore tries the repositories in", () => {
  test("every repository with a complete copy and its archive, lowest number first, whatever order they are given in", () => {
    expect(restoreOrder([holding(3), holding(1), holding(2)], "D2", { kind: "immediate" }).order).toEqual([1, 2, 3]);
  });

  test("a copy absent, unfinished or failed is not tried, and says why", () => {
    const plan = restoreOrder(
      [
        holding(1, [full]),
        holding(2, [full, { ...diff, status: "running" }]),
        holding(3, [{ ...full, status: "failed" }, diff]),
        holding(4),
      ],
      "D2",
      { kind: "latest" },
    );
    expect(plan.order).toEqual([4]);
    expect(plan.standings).toEqual([
      { index: 1, phase: "unusable", why: "it holds no copy of backup D2" },
      { index: 2, phase: "unusable", why: "its copy of backup D2 is running" },
      { index: 3, phase: "unusable", why: "its copy of backup F1, which D2 builds on, is failed" },
      { index: 4, phase: "complete", archiveCovers: true },
    ]);
  });

  test("a chain whose full the repository lacks is not tried", () => {
    const plan = restoreOrder([holding(1, [diff]), holding(2)], "D2", { kind: "immediate" });
    expect(plan.order).toEqual([2]);
    expect(plan.standings[0]).toEqual({ index: 1, phase: "unusable", why: "it holds no copy of backup F1, which D2 builds on" });
  });

  test("a repository whose archive misses a segment after the backup's start is tried after one that has it all", () => {
    const plan = restoreOrder([holding(1, [full, diff], archive(6, [4])), holding(2)], "D2", { kind: "latest" });
    expect(plan.order).toEqual([2, 1]);
    expect(plan.standings[0]).toEqual({
      index: 1,
      phase: "complete",
      archiveCovers: false,
      why: "its archive misses 000000010000000000000004",
    });
  });

  test("a gap beyond an LSN target, or before the backup's start, does not matter", () => {
    const beyond = restoreOrder([holding(1, [full, diff], archive(8, [7])), holding(2)], "D2", { kind: "lsn", lsn: "0/5000000" });
    expect(beyond.order).toEqual([1, 2]);
    const before = restoreOrder([holding(1, [full, diff], archive(6, [2])), holding(2)], "D2", { kind: "immediate" });
    expect(before.order).toEqual([1, 2]);
  });

  test("an archive that ends before the target is tried last", () => {
    const plan = restoreOrder([holding(1, [full, diff], archive(4)), holding(2, [full, diff], archive(9))], "D2", {
      kind: "lsn",
      lsn: "0/7000000",
    });
    expect(plan.order).toEqual([2, 1]);
    expect(plan.standings[0]).toMatchObject({ archiveCovers: false, why: "its archive ends at 0/5000000" });
    const late = restoreOrder([holding(1), holding(2, [full, diff], { ...archive(6), reachedAt: "2026-11-09T00:00:00.000Z" })], "D2", {
      kind: "time",
      time: "2026-11-07T00:00:00.000Z",
    });
    expect(late.order).toEqual([2, 1]);
  });

  test("nothing to try when no repository holds a complete copy", () => {
    expect(restoreOrder([holding(1, [diff]), holding(2, [])], "D2", { kind: "immediate" }).order).toEqual([]);
  });
});

describe("what the repositories hold together", () => {
  test("a completed copy outranks an unfinished one; segments and the latest transaction end are merged", () => {
    const union = unionHoldings([
      { index: 1, manifests: [full, { ...diff, status: "running" }], archive: archive(3) },
      { index: 2, manifests: [diff], archive: { segments: [{ timeline: 1, segment: 5 }], reachedAt: "2026-11-09T00:00:00.000Z" } },
    ]);
    expect(union.manifests.map((m) => [m.id, m.status])).toEqual([
      ["F1", "completed"],
      ["D2", "completed"],
    ]);
    expect(union.archive.segments.map((s) => s.segment).sort()).toEqual([1, 2, 3, 5]);
    expect(union.archive.reachedAt).toBe("2026-11-09T00:00:00.000Z");
  });
});
