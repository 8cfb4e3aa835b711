import { expect } from "@jest/globals";
import { mkdir, readdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { Readable } from "node:stream";
import { ErrorCode } from "../../src/errors";
import { archiveKey, legacyWalSummaryKey, walSummaryKey } from "../../src/repository/repository-layout";
import { Repository, walSpoolDir } from "../../src/storage/repository";
import type { WalSummarizer } from "../../src/wal/wal-summary";
import { summarizerFor } from "../helpers/wal-pusher";
import type { WalSegmentSummary } from "../../src/wal/waldump-summary";
import { tempHome } from "../helpers/home";

/**
 * WAL summaries are objects of the repository (repository-layout's
 * walSummaryKey), read and written through its store; a directory
 * repository's summaries from before objects (`wal-summary/<segment>.json`,
 * plain JSON) are still read, and expire with their segments.
 */
const SEGMENT_3 = "000000010000000000000003";
const SEGMENT_4 = "000000010000000000000004";
const SEGMENT_5 = "000000010000000000000005";

function summary(segment: string, restorePoint: { name: string; lsn: string } | null, records = 1): WalSegmentSummary {
  return {
    formatVersion: 1,
    segment,
    timeline: 1,
    blocks: { "1663/5/16384": { main: [[0, records]] } },
    created: [],
    truncated: [],
    databases: [],
    restorePoints: restorePoint ? [restorePoint] : [],
    records,
    complete: true,
    error: null,
  };
}

async function summarizerHome(label: string): Promise<{ repository: Repository; summarizer: WalSummarizer; home: string }> {
  const home = await tempHome(label);
  const repository = new Repository(path.join(home, "repository"), null, { spoolDir: walSpoolDir(home) });
  await repository.ensure();
  const summarizer = summarizerFor(repository, path.join(home, "tmp"));
  return { repository, summarizer, home };
}

/** A summary as a directory repository wrote it before objects: plain JSON at wal-summary/<segment>.json. */
async function writeLegacy(repository: Repository, content: WalSegmentSummary | string): Promise<void> {
  await mkdir(repository.walSummaryDir, { recursive: true, mode: 0o700 });
  const segment = typeof content === "string" ? SEGMENT_5 : content.segment;
  const text = typeof content === "string" ? content : `${JSON.stringify(content)}\n`;
  await writeFile(path.join(repository.root, legacyWalSummaryKey(0, segment)), text, { mode: 0o600 });
}

describe("WAL summaries in the repository's objects", () => {
  test("a summary object is read before a legacy file of the same segment; a legacy file alone is read; none is null", async () => {
    const { repository, summarizer } = await summarizerHome("summary-objects");
    await repository.objects.writeJson(walSummaryKey(0, SEGMENT_3), summary(SEGMENT_3, null, 7));
    await writeLegacy(repository, summary(SEGMENT_3, null, 99));
    await writeLegacy(repository, summary(SEGMENT_4, null, 4));

    expect(await summarizer.read(SEGMENT_3)).toMatchObject({ segment: SEGMENT_3, records: 7 });
    expect(await summarizer.read(SEGMENT_4)).toMatchObject({ segment: SEGMENT_4, records: 4 });
    expect(await summarizer.read(SEGMENT_5)).toBeNull();
  });

  test("a legacy summary that is not JSON is REPOSITORY_CORRUPT, not taken for absent", async () => {
    const { repository, summarizer } = await summarizerHome("summary-corrupt");
    await writeLegacy(repository, "{ torn");
    await expect(summarizer.read(SEGMENT_5)).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
  });

  test("restore points come from objects and legacy files alike, each segment once, by LSN", async () => {
    const { repository, summarizer } = await summarizerHome("summary-points");
    await repository.objects.writeJson(walSummaryKey(0, SEGMENT_4), summary(SEGMENT_4, { name: "second", lsn: "0/4000100" }));
    await writeLegacy(repository, summary(SEGMENT_3, { name: "first", lsn: "0/3000100" }));
    // A segment with both: the object is the one read.
    await repository.objects.writeJson(walSummaryKey(0, SEGMENT_5), summary(SEGMENT_5, { name: "third", lsn: "0/5000100" }));
    await writeLegacy(repository, summary(SEGMENT_5, { name: "stale", lsn: "0/5000200" }));

    expect((await summarizer.restorePoints()).map((point) => point.name)).toEqual(["first", "second", "third"]);
  });

  test("expiry of a segment removes its summary object and its legacy file, and nothing of the segments it keeps", async () => {
    const { repository } = await summarizerHome("summary-expiry");
    for (const segment of [SEGMENT_3, SEGMENT_4, SEGMENT_5]) {
      await writeFile(path.join(repository.spoolDir, segment), "wal", { mode: 0o600 });
      await repository.objects.writeJson(walSummaryKey(0, segment), summary(segment, null));
      await writeLegacy(repository, summary(segment, null));
    }

    expect(await repository.removeSegmentsBefore(5)).toBe(2);
    expect((await repository.objects.list("wal-summary/")).map((info) => info.key)).toEqual([
      walSummaryKey(0, SEGMENT_5),
      legacyWalSummaryKey(0, SEGMENT_5),
    ]);
    expect(await readdir(repository.spoolDir)).toEqual([SEGMENT_5]);
  });
});

describe("the time the archived WAL reaches, from its summaries", () => {
  test("a transaction's end whose record runs into a segment not pushed yet is not reached; once it is pushed, it is", async () => {
    const { repository } = await summarizerHome("reached-at");
    const at = (segment: string, time: string, recordEnd: string): WalSegmentSummary => ({
      ...summary(segment, null),
      lastTransactionEndAt: time,
      lastTransactionRecordEnd: recordEnd,
    });
    for (const name of [SEGMENT_3, SEGMENT_4]) await repository.objects.putStream(archiveKey(0, name), Readable.from([Buffer.from(name)]));
    await repository.archive.rebuild();
    await repository.objects.writeJson(walSummaryKey(0, SEGMENT_3), at(SEGMENT_3, "2026-12-07T12:00:01.000Z", "0/3FFFF00"));
    // Segment 4's last COMMIT starts in it and ends 0x40 bytes into segment 5 (received and summarised, not pushed).
    await repository.objects.writeJson(walSummaryKey(0, SEGMENT_4), at(SEGMENT_4, "2026-12-07T12:00:02.000Z", "0/5000040"));
    expect((await repository.archivedWalState()).reachedAt).toBe("2026-12-07T12:00:01.000Z");

    await repository.objects.putStream(archiveKey(0, SEGMENT_5), Readable.from([Buffer.from(SEGMENT_5)]));
    await repository.archive.rebuild();
    expect((await repository.archivedWalState()).reachedAt).toBe("2026-12-07T12:00:02.000Z");
  });
});
