import { expect } from "@jest/globals";
import { readdir, rm, writeFile } from "node:fs/promises";
import { buffer } from "node:stream/consumers";
import path from "node:path";
import { ErrorCode, RelevoError } from "../../src/errors";
import { archivedNames, reusedTimelineCheck, setAsideReusedTimelines } from "../../src/failover/old-primary-candidate";
import type { OperationContext } from "../../src/failover/operation-context";
import { createLogger } from "../../src/log";
import { archiveKey, divergedKey, legacyWalSummaryKey, walSummaryKey } from "../../src/repository/repository-layout";
import { divergedFolder } from "../../src/storage/wal-archive";
import { Repository, walSpoolDir } from "../../src/storage/repository";
import { archiveIdentity } from "../../src/wal/archive-identity";
import type { ArchivedWal } from "../../src/wal/archived-wal";
import type { WalSegmentSummary } from "../../src/wal/waldump-summary";
import { tempHome } from "../helpers/home";
import { pusherFor, summarizerFor } from "../helpers/wal-pusher";
import { segmentStart, walSegment } from "../helpers/wal-segment";
import { parseSegmentName } from "../../src/postgres/wal-names";
import { timelinePath } from "../../src/postgres/timelines";
import { testNode } from "../helpers/node-facts";

/**
 * A timeline reused by a promotion (a history missing from the archive):
 * the archive's files of the abandoned branch are set aside, objects
 * first, with their summaries, so that the new branch's files of the same
 * names are pushed and summarised from its own WAL. And an archive whose
 * objects cannot be read is an error, never taken for an empty one.
 */
const HISTORY_3 = "00000003.history";
const SEGMENT_3_6 = "000000030000000000000006";
const SEGMENT_3_7 = "000000030000000000000007";
/** Timeline 3 as an old primary's branch made it, and as the promoted node's new branch made it again. */
const OLD_HISTORY_3 = "1\t0/3000000\tno recovery target specified\n2\t0/5800000\told branch\n";
const NEW_HISTORY_3 = "1\t0/3000000\tno recovery target specified\n2\t0/5A00000\tnew branch\n";
const OLD_BRANCH = () => timelinePath(3, OLD_HISTORY_3);
const NEW_BRANCH = () => timelinePath(3, NEW_HISTORY_3);
const SYSTEM = 7001n;

async function repositoryHome(label: string): Promise<Repository> {
  const home = await tempHome(label);
  const repository = new Repository(path.join(home, "repository"), null, { spoolDir: walSpoolDir(home) });
  await repository.ensure();
  return repository;
}

/** Receives `name`: a segment as a whole one of cluster SYSTEM with `content` as its marker; anything else as it is. */
async function receive(repository: Repository, name: string, content: string | Buffer): Promise<void> {
  const file = parseSegmentName(name) && typeof content === "string" ? walSegment(name, SYSTEM, content) : content;
  await writeFile(path.join(repository.spoolDir, name), file, { mode: 0o600 });
}

/** The marker of the archive's segment `name` (see walSegment). */
async function archived(repository: Repository, name: string): Promise<string> {
  return markerOf(await buffer(await repository.objects.getStream(archiveKey(0, name))));
}

function markerOf(segment: Buffer): string {
  return segment.subarray(64, segment.indexOf(0, 64)).toString("utf8");
}

function oldBranchSummary(segment: string): WalSegmentSummary {
  return {
    formatVersion: 1,
    segment,
    timeline: 3,
    blocks: { "1663/5/16384": { main: [[0, 1]] } },
    created: [],
    truncated: [],
    databases: [],
    restorePoints: [],
    records: 1,
    complete: true,
    error: null,
    lastTransactionEndAt: "2030-01-01T00:00:00.000Z",
  };
}

describe("a set-aside of a reused timeline", () => {
  test("fails at the objects: the received files stay; run again it finishes, and the new branch is pushed", async () => {
    const repository = await repositoryHome("aside-objects-first");
    await receive(repository, HISTORY_3, OLD_HISTORY_3);
    await receive(repository, SEGMENT_3_6, "old branch");
    await pusherFor(repository, { primaryHistory: OLD_BRANCH }).pushPending();
    const folder = divergedFolder(new Date("2026-12-07T12:00:00.000Z"));
    // diverged/ taken by a file: no object can be put below it.
    await writeFile(path.join(repository.root, "diverged"), "not a directory", { mode: 0o600 });

    await expect(repository.archivedWal.setAside([HISTORY_3, SEGMENT_3_6], folder)).rejects.toThrow();
    // Nothing moved locally while the archive still holds the old branch.
    expect((await readdir(repository.spoolDir)).sort()).toEqual([HISTORY_3, SEGMENT_3_6]);
    expect(await repository.archive.names()).toEqual([HISTORY_3, SEGMENT_3_6]);

    // Run again (the failover's resume) once the store takes puts.
    await rm(path.join(repository.root, "diverged"));
    const aside = await repository.archivedWal.setAside([HISTORY_3, SEGMENT_3_6], folder);
    expect(aside.moved).toEqual([HISTORY_3, SEGMENT_3_6]);
    expect(await repository.archive.names()).toEqual([]);
    expect(markerOf(await buffer(await repository.objects.getStream(divergedKey(0, folder[1]!, SEGMENT_3_6))))).toBe("old branch");

    // The promoted node's timeline 3 arrives under the same names: pushed, the archive's is the new branch's.
    await receive(repository, HISTORY_3, NEW_HISTORY_3);
    await receive(repository, SEGMENT_3_6, "new branch");
    expect(await pusherFor(repository, { primaryHistory: NEW_BRANCH }).pushPending()).toEqual([HISTORY_3, SEGMENT_3_6]);
    expect(await archived(repository, SEGMENT_3_6)).toBe("new branch");
    expect(await repository.archivedHistory(3)).toBe(NEW_HISTORY_3);

    // Run once more (a resume after the first run had finished): the new branch is not the copy set aside, it stays.
    expect((await repository.archivedWal.setAside([HISTORY_3, SEGMENT_3_6], folder)).moved).toEqual([]);
    expect(await archived(repository, SEGMENT_3_6)).toBe("new branch");
    expect((await readdir(repository.spoolDir)).sort()).toEqual([HISTORY_3, SEGMENT_3_6]);
  });

  test("takes each segment's summary with it: the new branch's segment of that name is summarised from its own WAL", async () => {
    const repository = await repositoryHome("aside-summaries");
    const home = path.dirname(repository.root);
    const summarizer = summarizerFor(repository, path.join(home, "tmp"));
    await receive(repository, SEGMENT_3_6, "old branch");
    await receive(repository, SEGMENT_3_7, "old branch");
    await pusherFor(repository).pushPending();
    await repository.objects.writeJson(walSummaryKey(0, SEGMENT_3_6), oldBranchSummary(SEGMENT_3_6));
    await writeFile(path.join(repository.root, legacyWalSummaryKey(0, SEGMENT_3_7)), JSON.stringify(oldBranchSummary(SEGMENT_3_7)));
    expect(await summarizer.summaryOf(3, 6)).toMatchObject({ lastTransactionEndAt: "2030-01-01T00:00:00.000Z" });

    await repository.archivedWal.setAside([SEGMENT_3_6, SEGMENT_3_7], divergedFolder());
    expect(await repository.objects.list("wal-summary/")).toEqual([]);

    // The new branch's segments 6 and 7 on timeline 3: the window's time is never the abandoned branch's.
    await receive(repository, SEGMENT_3_6, "new branch, not WAL pg_waldump can read");
    await receive(repository, SEGMENT_3_7, "new branch");
    await pusherFor(repository).pushPending();
    expect((await repository.archivedWalState()).reachedAt).toBeNull();
    // What a differential or incremental asks for segment 6: summarised from the file there now, not the old branch's.
    const summary = await summarizer.summaryOf(3, 6);
    expect(summary.blocks).toEqual({});
    expect(summary).not.toHaveProperty("lastTransactionEndAt", "2030-01-01T00:00:00.000Z");
  });
});

describe("the archive's identity", () => {
  test("an archived segment that cannot be read is an error, not an empty repository", async () => {
    const repository = await repositoryHome("identity-unreadable");
    const name = "000000010000000000000003";
    await receive(repository, name, walSegment(name, SYSTEM));
    await pusherFor(repository).pushPending();
    await rm(path.join(repository.spoolDir, name));
    expect(await archiveIdentity(repository)).toMatchObject({ systemIdentifier: "7001" });

    // The object replaced by bytes that are not Relevo's stored form.
    await writeFile(path.join(repository.root, archiveKey(0, name)), "garbage, not Relevo's stored form");
    await expect(archiveIdentity(repository)).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
  });

  test("a received segment that is a link, or shorter than a header, has no header: the next one is read", async () => {
    const repository = await repositoryHome("identity-no-header");
    await receive(repository, "000000010000000000000003", segmentStart(7001n));
    await receive(repository, "000000010000000000000004", Buffer.from("short"));
    const { symlink } = await import("node:fs/promises");
    await symlink("/etc/hostname", path.join(repository.spoolDir, "000000010000000000000005.partial"));
    expect(await archiveIdentity(repository)).toEqual({ systemIdentifier: "7001", source: "WAL segment 000000010000000000000003" });
  });
});

describe("the failover's set-aside of a reused timeline (a stopped old primary promoted)", () => {
  const node1 = testNode("node1");

  /** What reusedTimelineCheck and setAsideReusedTimelines use of a failover's context: the archive, the log, events, node1 on timeline 2. */
  function contextOf(
    repository: Repository,
    emitted: unknown[],
    archive: Pick<ArchivedWal, "names" | "setAside"> = repository.archivedWal,
  ) {
    return {
      deps: {
        archive,
        logger: createLogger({ level: "silent" }),
        events: { emit: (event: unknown) => Promise.resolve(void emitted.push(event)) },
      },
      facts: () => Promise.resolve({ timeline: 2 }),
    } as unknown as OperationContext;
  }

  test("an archive that cannot be listed fails the check before the promotion, never taken for an empty one", async () => {
    const repository = await repositoryHome("reuse-unlisted");
    const unavailable = new RelevoError(ErrorCode.RepositoryUnavailable, "the store does not answer");
    const archive = { names: () => Promise.reject(unavailable), setAside: repository.archivedWal.setAside.bind(repository.archivedWal) };
    await expect(archivedNames(archive)).rejects.toBe(unavailable);
    await expect(reusedTimelineCheck(contextOf(repository, [], archive), node1)).rejects.toBe(unavailable);
  });

  test("failed partway, the resumed failover (promotedNow false) finishes it from the recorded check, once", async () => {
    const repository = await repositoryHome("reuse-resumed");
    const emitted: unknown[] = [];
    const context = contextOf(repository, emitted);
    await receive(repository, "000000020000000000000005", "timeline 2, the node's own");
    await receive(repository, HISTORY_3, OLD_HISTORY_3);
    await receive(repository, SEGMENT_3_6, "old branch");
    await pusherFor(repository, { primaryHistory: OLD_BRANCH }).pushPending();
    const check = await reusedTimelineCheck(context, node1);
    expect(JSON.parse(check)).toMatchObject({ names: [HISTORY_3, SEGMENT_3_6] });

    // Promoted onto timeline 3; the store fails the set-aside (diverged/ taken by a file).
    await writeFile(path.join(repository.root, "diverged"), "not a directory", { mode: 0o600 });
    await expect(setAsideReusedTimelines(context, { node: node1, timeline: 3, promotedNow: true, check })).rejects.toThrow();
    expect(await repository.archive.names()).toContain(SEGMENT_3_6);
    expect(emitted).toEqual([]);

    // Resumed: promote() finds it promoted already; the recorded check is set aside now.
    await rm(path.join(repository.root, "diverged"));
    await setAsideReusedTimelines(context, { node: node1, timeline: 3, promotedNow: false, check });
    expect(await repository.archive.names()).toEqual(["000000020000000000000005"]);
    expect(emitted).toEqual([expect.objectContaining({ kind: "archive:timeline-reused", data: expect.objectContaining({ timeline: 3 }) })]);

    // The new branch pushed under the same names; a further resume leaves it alone and says nothing more.
    await receive(repository, SEGMENT_3_6, "new branch");
    await pusherFor(repository, { primaryHistory: NEW_BRANCH }).pushPending();
    await setAsideReusedTimelines(context, { node: node1, timeline: 3, promotedNow: false, check });
    expect(await archived(repository, SEGMENT_3_6)).toBe("new branch");
    expect(emitted).toHaveLength(1);
  });
});
