import { expect, jest } from "@jest/globals";
import { link, mkdir, open, readdir, rename, rm, writeFile } from "node:fs/promises";
import { Readable } from "node:stream";
import { buffer } from "node:stream/consumers";
import path from "node:path";
import { CHUNK_SIZE, HEADER_SIZE } from "../../src/repository/object-codec";
import { archiveKey, divergedKey } from "../../src/repository/repository-layout";
import { divergedFolder } from "../../src/storage/wal-archive";
import { Repository, walSpoolDir } from "../../src/storage/repository";
import { DirectoryStore } from "../../src/repository/directory-store";
import { WalIndex } from "../../src/wal/wal-index";
import { archiveIdentity } from "../../src/wal/archive-identity";
import { pushableNames, type WalPusher } from "../../src/wal/wal-pusher";
import { HISTORY_MAX_BYTES } from "../../src/wal/wal-file-check";
import { tempHome } from "../helpers/home";
import { pusherFor } from "../helpers/wal-pusher";
import { walSegment } from "../helpers/wal-segment";
import { parseSegmentName } from "../../src/postgres/wal-names";
import { timelinePath, type TimelineStep } from "../../src/postgres/timelines";

/**
 * The pusher moves what pg_receivewal received (complete segments and
 * histories, never a `.partial`) into the repository's archive objects,
 * and the repository's WAL index says what the archive holds without
 * listing it at every question.
 */
const SEGMENT_3 = "000000010000000000000003";
const SEGMENT_4 = "000000010000000000000004";
const SEGMENT_5 = "000000010000000000000005";
const SEGMENT_2_4 = "000000020000000000000004";
const HISTORY_2 = "00000002.history";
const HISTORY_3 = "00000003.history";
const SYSTEM = 7001n;
/** Timeline 2 branched off timeline 1 at 0/4000000, and the primary's history through it. */
const OWN_HISTORY_2 = "1\t0/4000000\tno recovery target specified\n";
const ON_TIMELINE_2 = () => timelinePath(2, OWN_HISTORY_2);

async function pusherHome(
  label: string,
  primaryHistory: () => readonly TimelineStep[] | null = ON_TIMELINE_2,
): Promise<{ repository: Repository; pusher: WalPusher }> {
  const home = await tempHome(label);
  const repository = new Repository(path.join(home, "repository"), null, { spoolDir: walSpoolDir(home) });
  await repository.ensure();
  const pusher = pusherFor(repository, { primaryHistory });
  return { repository, pusher };
}

/** Receives `name`: a segment as a whole one of cluster SYSTEM, `content` its marker; a history (or anything else) as it is. */
async function receive(repository: Repository, name: string, content: string | Buffer): Promise<void> {
  const file = parseSegmentName(name) && typeof content === "string" ? walSegment(name, SYSTEM, content) : content;
  await writeFile(path.join(repository.spoolDir, name), file, { mode: 0o600 });
}

/** A stored history's text, or a stored segment's marker (see walSegment). */
async function stored(repository: Repository, name: string): Promise<string> {
  const content = await buffer(await repository.objects.getStream(archiveKey(0, name)));
  return parseSegmentName(name) ? content.subarray(64, content.indexOf(0, 64)).toString("utf8") : content.toString("utf8");
}

describe("which received WAL files are pushed", () => {
  test("histories first, then complete segments oldest first; never a .partial, a pushed file or anything else", () => {
    const names = [SEGMENT_5, `${SEGMENT_2_4}.partial`, HISTORY_2, SEGMENT_2_4, SEGMENT_4, SEGMENT_3, "diverged", "x.tmp"];
    expect(pushableNames(names, (name) => name === SEGMENT_3)).toEqual([HISTORY_2, SEGMENT_4, SEGMENT_2_4, SEGMENT_5]);
  });
});

describe("the WAL pusher", () => {
  test("puts each complete segment and history at its archive key, once, and the index knows it", async () => {
    const { repository, pusher } = await pusherHome("pusher-puts");
    await receive(repository, SEGMENT_3, "three");
    await receive(repository, SEGMENT_4, "four");
    await receive(repository, HISTORY_2, OWN_HISTORY_2);
    await receive(repository, `${SEGMENT_5}.partial`, walSegment(SEGMENT_5, SYSTEM, "five"));

    expect(await pusher.pushPending()).toEqual([SEGMENT_3, SEGMENT_4, HISTORY_2]); // sorted by name
    expect(await stored(repository, SEGMENT_3)).toBe("three");
    expect(await stored(repository, HISTORY_2)).toContain("0/4000000");
    expect(await repository.objects.exists(archiveKey(0, SEGMENT_5))).toBe(false);
    expect(await repository.archive.names()).toEqual([SEGMENT_3, SEGMENT_4, HISTORY_2]);
    expect(await pusher.pushPending()).toEqual([]);

    // pg_receivewal completes the segment: the next pass pushes it.
    await rename(path.join(repository.spoolDir, `${SEGMENT_5}.partial`), path.join(repository.spoolDir, SEGMENT_5));
    expect(await pusher.pushPending()).toEqual([SEGMENT_5]);
  });

  test("a history the archive holds with other content is never replaced", async () => {
    const { repository, pusher } = await pusherHome("pusher-history");
    await receive(repository, SEGMENT_3, "three");
    expect(await pusher.pushPending()).toEqual([SEGMENT_3]);
    // Put since the index was built (it does not know it): the pusher's head finds it before any put.
    await repository.objects.putStream(archiveKey(0, HISTORY_2), Readable.from([Buffer.from("the archive's own\n")]));
    await receive(repository, HISTORY_2, OWN_HISTORY_2);

    expect(await pusher.pushPending()).toEqual([]);
    expect(await stored(repository, HISTORY_2)).toBe("the archive's own\n");
    // Refused once, not retried at every pass: were it compared again, the archive's now being the received content
    // would make it pushed.
    await repository.objects.putStream(archiveKey(0, HISTORY_2), Readable.from([Buffer.from(OWN_HISTORY_2)]));
    expect(await pusher.pushPending()).toEqual([]);
    expect(await repository.archive.has(HISTORY_2)).toBe(false);

    // The same content as the archive's (put by another instance since the listing): taken as pushed, kept as it was.
    const history3 = `${OWN_HISTORY_2}2\t0/5000000\tno recovery target specified\n`;
    await repository.objects.putStream(archiveKey(0, HISTORY_3), Readable.from([Buffer.from(history3)]));
    await receive(repository, HISTORY_3, history3);
    // (Another pusher, a restart's, never refused HISTORY_2: the archive's being the same content now, it counts as pushed.)
    expect(await pusherFor(repository, { primaryHistory: () => timelinePath(3, history3) }).pushPending()).toEqual([HISTORY_2, HISTORY_3]);
    expect(await repository.archive.has(HISTORY_3)).toBe(true);
    expect(await stored(repository, HISTORY_3)).toBe(history3);
  });

  test("a store that cannot be written fails the pass and records nothing; once writable, everything is pushed", async () => {
    const { repository, pusher } = await pusherHome("pusher-unwritable");
    await receive(repository, SEGMENT_3, "three");
    // The archive's prefix taken by a file: no object can be put below it.
    await writeFile(path.join(repository.root, "archive"), "not a directory", { mode: 0o600 });

    await expect(pusher.pushPending()).rejects.toThrow();
    expect(await repository.archive.names()).toEqual([]);
    expect(await readdir(repository.spoolDir)).toContain(SEGMENT_3);

    await rename(path.join(repository.root, "archive"), path.join(repository.root, "not-archive"));
    await repository.archive.rebuild();
    expect(await pusher.pushPending()).toEqual([SEGMENT_3]);
    expect(await stored(repository, SEGMENT_3)).toBe("three");
  });
});

describe("the repository's WAL index", () => {
  test("is rebuilt from a listing, confirms a name it lacks with one head, and follows puts and deletions", async () => {
    const { repository } = await pusherHome("wal-index");
    let now = 0;
    const index = new WalIndex({ objects: repository.objects, generation: 0, rebuildMs: 1000, now: () => now });
    await repository.objects.putStream(archiveKey(0, SEGMENT_3), Readable.from([Buffer.from("three")]));
    expect(await index.names()).toEqual([SEGMENT_3]);

    // Put by another instance after the listing: the index does not list it, a head finds it.
    await repository.objects.putStream(archiveKey(0, SEGMENT_4), Readable.from([Buffer.from("four")]));
    expect(await index.has(SEGMENT_4)).toBe(false);
    expect(await index.missing([SEGMENT_3, SEGMENT_4, SEGMENT_5])).toEqual([SEGMENT_5]);
    expect(await index.has(SEGMENT_4)).toBe(true);

    index.removed(SEGMENT_3);
    expect([...(await index.segments()).get(1)!]).toEqual([4]);

    // Past its age it lists again: what the listing shows is the truth.
    now = 2000;
    expect(await index.names()).toEqual([SEGMENT_3, SEGMENT_4]);
  });
});

describe("the WAL received and archived together (ArchivedWal)", () => {
  test("names are the union; a set-aside moves objects and received files under diverged/<time>/ objects, the spool keeps no copy", async () => {
    const { repository, pusher } = await pusherHome("archived-wal-aside");
    await receive(repository, SEGMENT_3, "three");
    await receive(repository, SEGMENT_4, "four");
    await receive(repository, "000000010000000000000006", "six");
    await pusher.pushPending();
    // The receiving directory lost its copy of segment 4 (wiped): the archive still names it.
    await rm(path.join(repository.spoolDir, SEGMENT_4));
    await receive(repository, `${SEGMENT_5}.partial`, "five");
    expect(await repository.archivedWal.names()).toEqual([SEGMENT_3, SEGMENT_4, `${SEGMENT_5}.partial`, "000000010000000000000006"]);

    const folder = divergedFolder(new Date("2026-12-07T12:00:00.000Z"));
    const aside = await repository.archivedWal.setAside([SEGMENT_4, `${SEGMENT_5}.partial`, "000000010000000000000006"], folder);
    expect(aside.moved).toEqual([SEGMENT_4, `${SEGMENT_5}.partial`, "000000010000000000000006"]);
    expect(await repository.objects.exists(archiveKey(0, SEGMENT_4))).toBe(false);
    const marker = async (name: string) => {
      const content = await buffer(await repository.objects.getStream(divergedKey(0, folder[1]!, name)));
      return content.subarray(64, content.indexOf(0, 64)).toString();
    };
    expect(await marker(SEGMENT_4)).toBe("four");
    expect(await marker("000000010000000000000006")).toBe("six");
    // The .partial, never pushed, is kept as an object too.
    expect((await buffer(await repository.objects.getStream(divergedKey(0, folder[1]!, `${SEGMENT_5}.partial`)))).toString()).toBe("five");
    expect(await repository.archive.names()).toEqual([SEGMENT_3]);
    // Nothing of it is left in the spool (review 23, §10: a diverged/ there grew outside the spool's budget).
    expect(await readdir(repository.spoolDir)).toEqual([SEGMENT_3]);
    expect(await repository.archivedWal.names()).toEqual([SEGMENT_3]);
  });

  test("a history is added to the archive unless it holds one; the archive's is what is read", async () => {
    const { repository } = await pusherHome("archived-wal-history");
    expect(await repository.archivedWal.addHistory(2, "ours\n")).toBe("added");
    expect(await repository.archivedHistory(2)).toBe("ours\n");
    await repository.objects.putStream(archiveKey(0, "00000003.history"), Readable.from([Buffer.from("archived\n")]));
    await repository.archivedWal.addHistory(3, "written later\n");
    expect(await repository.archivedHistory(3)).toBe("archived\n");
    expect(await repository.archivedWal.readHistory(3)).toBe("archived\n");
  });
});

describe("expiry of archived WAL", () => {
  test("removes the segments below the cut from the archive's objects, the index and the receiving directory; histories stay", async () => {
    const { repository, pusher } = await pusherHome("archived-expiry");
    for (const name of [SEGMENT_3, SEGMENT_4, SEGMENT_5]) await receive(repository, name, name);
    await receive(repository, HISTORY_2, OWN_HISTORY_2);
    await pusher.pushPending();
    // Pushed, then gone from the receiving directory (trimmed): expired all the same.
    await rm(path.join(repository.spoolDir, SEGMENT_3));

    expect(await repository.removeSegmentsBefore(5)).toBe(2);
    expect(await repository.archive.names()).toEqual([SEGMENT_5, HISTORY_2]);
    expect((await repository.objects.list("archive/")).map((info) => info.key)).toEqual([
      archiveKey(0, SEGMENT_5),
      archiveKey(0, HISTORY_2),
    ]);
    expect((await readdir(repository.spoolDir)).sort()).toEqual([SEGMENT_5, HISTORY_2]);
  });
});

describe("expiry of archived WAL pushed elsewhere (review 21, L5)", () => {
  test("an object the index does not know (pushed by another instance since its listing) is expired too, not leaked", async () => {
    const { repository, pusher } = await pusherHome("archived-expiry-stale");
    await receive(repository, SEGMENT_5, "five");
    await pusher.pushPending();
    expect(await repository.archive.names()).toEqual([SEGMENT_5]);
    // Put since the listing, as the lease holder on another instance does (or a push that raced an expiry).
    await repository.objects.putStream(archiveKey(0, SEGMENT_3), Readable.from([walSegment(SEGMENT_3, SYSTEM)]));

    expect(await repository.removeSegmentsBefore(5)).toBe(1);
    expect((await repository.objects.list("archive/")).map((info) => info.key)).toEqual([archiveKey(0, SEGMENT_5)]);
  });
});

describe("the archive's identity", () => {
  test("is read from the archive's newest segment by a range read, the receiving directory wiped", async () => {
    const { repository, pusher } = await pusherHome("archived-identity");
    await writeFile(path.join(repository.spoolDir, SEGMENT_3), walSegment(SEGMENT_3, 7002n), { mode: 0o600 });
    await writeFile(path.join(repository.spoolDir, SEGMENT_4), walSegment(SEGMENT_4, 7002n, "4"), { mode: 0o600 });
    expect(await pusher.pushPending()).toEqual([SEGMENT_3, SEGMENT_4]);
    for (const name of [SEGMENT_3, SEGMENT_4]) await rm(path.join(repository.spoolDir, name));
    // Segment 4's object is 16 MiB; a byte of its second chunk damaged: a whole read fails (REPOSITORY_CORRUPT),
    // a range read of its header reads the first chunk only.
    const object = await open(path.join(repository.root, archiveKey(0, SEGMENT_4)), "r+");
    await object.write(Buffer.from([0xff ^ 0x5a]), 0, 1, HEADER_SIZE + CHUNK_SIZE + 16 + 100);
    await object.close();
    await expect(repository.objects.getStream(archiveKey(0, SEGMENT_4)).then((content) => buffer(content))).rejects.toMatchObject({
      code: "REPOSITORY_CORRUPT",
    });

    expect(await archiveIdentity(repository)).toEqual({ systemIdentifier: "7002", source: `WAL segment ${SEGMENT_4}` });
  });
});

describe("what the pusher never puts (review 21, M1)", () => {
  test("a received file under a segment's name that is not that segment of this cluster, alone in the spool", async () => {
    const { repository, pusher } = await pusherHome("pusher-refuses-segments");
    await receive(repository, SEGMENT_3, "three");
    expect(await pusher.pushPending()).toEqual([SEGMENT_3]);
    const planted = {
      [SEGMENT_4]: Buffer.from("ten bytes!"),
      [SEGMENT_5]: walSegment(SEGMENT_3, SYSTEM, "segment 3's pages"),
      "000000010000000000000006": walSegment("000000020000000000000006", SYSTEM, "a later timeline's pages"),
      "000000010000000000000007": walSegment("000000010000000000000007", 9999n, "another cluster's"),
    };
    for (const [name, content] of Object.entries(planted)) await receive(repository, name, content);
    // A second name for a file elsewhere (protected_hardlinks is not everywhere on).
    await receive(repository, "000000010000000000000008", "eight");
    await link(path.join(repository.spoolDir, "000000010000000000000008"), path.join(path.dirname(repository.spoolDir), "elsewhere"));
    await receive(repository, "000000010000000000000009", "nine");

    expect(await pusher.pushPending()).toEqual(["000000010000000000000009"]);
    for (const name of [...Object.keys(planted), "000000010000000000000008"]) {
      expect(await repository.objects.exists(archiveKey(0, name))).toBe(false);
    }
    expect(await repository.archive.names()).toEqual([SEGMENT_3, "000000010000000000000009"]);
  });

  test("a history is read within its cap, parsed, and put only as the primary's own; a planted future one never", async () => {
    let primary = timelinePath(2, OWN_HISTORY_2);
    const { repository, pusher } = await pusherHome("pusher-refuses-histories", () => primary);
    const planted3 = `${OWN_HISTORY_2}2\t0/5000000\tplanted before the promotion\n`;
    await receive(repository, HISTORY_2, OWN_HISTORY_2);
    await receive(repository, HISTORY_3, planted3);
    await receive(repository, "00000004.history", Buffer.alloc(HISTORY_MAX_BYTES + 1, "1"));
    await receive(repository, "00000005.history", "secret=hunter2\n");
    await receive(repository, "000000030000000000000006", "timeline 3");

    // Timeline 3 is past the primary's: its history waits, and so do its segments.
    expect(await pusher.pushPending()).toEqual([HISTORY_2]);
    for (const name of [HISTORY_3, "00000004.history", "00000005.history", "000000030000000000000006"]) {
      expect(await repository.objects.exists(archiveKey(0, name))).toBe(false);
    }

    // The primary reaches timeline 3 by another switch point: the planted history is refused, timeline 3's segments stay out.
    primary = timelinePath(3, `${OWN_HISTORY_2}2\t0/5800000\tno recovery target specified\n`);
    expect(await pusher.pushPending()).toEqual([]);
    expect(await repository.objects.exists(archiveKey(0, HISTORY_3))).toBe(false);
    expect(await repository.objects.exists(archiveKey(0, "000000030000000000000006"))).toBe(false);
  });
});

describe("a received file the pusher refuses (review 21, M2 and L2)", () => {
  /** A pusher on timeline 2 whose clock the test moves, its events recorded. */
  async function refusingHome(label: string) {
    let now = 1_000_000;
    const events: Array<{ kind: string; severity: string; data: unknown }> = [];
    const { repository } = await pusherHome(label);
    const pusher = pusherFor(repository, {
      primaryHistory: ON_TIMELINE_2,
      events: {
        emit: (event) => {
          events.push(event);
          return Promise.resolve(null);
        },
      },
      now: () => now,
    });
    const opened = jest.spyOn(repository.spool, "openFiles");
    const opens = (name: string) => opened.mock.calls.filter(([names]) => names.includes(name)).length;
    return { repository, pusher, events, opens, later: (ms: number) => (now += ms) };
  }

  test("is skipped, reported once and named in health, tried again only once changed or after its back-off; cleared when gone or valid", async () => {
    const { repository, pusher, events, opens, later } = await refusingHome("pusher-refusals");
    // A directory where a history should be, and where segment 4 should be: neither can be opened as a file.
    await mkdir(path.join(repository.spoolDir, HISTORY_2));
    await mkdir(path.join(repository.spoolDir, SEGMENT_4));
    await receive(repository, SEGMENT_3, "three");
    await receive(repository, SEGMENT_5, "five");
    await receive(repository, SEGMENT_2_4, "timeline 2");

    // The history blocks its own timeline's segment only; the refused segment is skipped, the next one pushed.
    expect(await pusher.pushPending()).toEqual([SEGMENT_3, SEGMENT_5]);
    expect(events).toEqual([
      expect.objectContaining({ kind: "archive:refused-file", severity: "critical", data: expect.objectContaining({ file: HISTORY_2 }) }),
      expect.objectContaining({ kind: "archive:refused-file", severity: "critical", data: expect.objectContaining({ file: SEGMENT_4 }) }),
    ]);
    expect(pusher.healthReasons).toEqual([
      expect.stringContaining(`refuses ${path.join(repository.spoolDir, SEGMENT_4)}: it cannot be opened`),
      expect.stringContaining(`refuses ${path.join(repository.spoolDir, HISTORY_2)}: it cannot be opened`),
    ]);

    // Passes in a row: neither is opened again, nor reported again.
    const tries = opens(SEGMENT_4);
    for (let pass = 0; pass < 5; pass++) expect(await pusher.pushPending()).toEqual([]);
    expect(opens(SEGMENT_4)).toBe(tries);
    expect(events).toHaveLength(2);
    // Its back-off over, it is tried again (once), and stays refused without another event.
    later(60_000);
    expect(await pusher.pushPending()).toEqual([]);
    expect(opens(SEGMENT_4)).toBe(tries + 1);
    expect(events).toHaveLength(2);

    // The history replaced by the primary's own: pushed at once, and timeline 2's segment with it.
    await rm(path.join(repository.spoolDir, HISTORY_2), { recursive: true });
    await receive(repository, HISTORY_2, OWN_HISTORY_2);
    expect(await pusher.pushPending()).toEqual([HISTORY_2, SEGMENT_2_4]);
    expect(pusher.healthReasons).toEqual([expect.stringContaining(SEGMENT_4)]);
    // The directory removed: nothing refused any more.
    await rm(path.join(repository.spoolDir, SEGMENT_4), { recursive: true });
    expect(await pusher.pushPending()).toEqual([]);
    expect(pusher.healthReasons).toEqual([]);
    expect(pusher.refused).toEqual([]);
  });

  test("a history the archive holds with other content stops its timeline's segments, until the archive's is set aside", async () => {
    const { repository, pusher, events } = await refusingHome("pusher-history-aside");
    // The archive's history of timeline 2 is another branch's, and the index knows it.
    await repository.objects.putStream(archiveKey(0, HISTORY_2), Readable.from([Buffer.from("1\t0/3800000\tanother branch\n")]));
    await repository.archive.rebuild();
    await receive(repository, HISTORY_2, OWN_HISTORY_2);
    await receive(repository, SEGMENT_3, "three");
    await receive(repository, SEGMENT_2_4, "timeline 2");

    expect(await pusher.pushPending()).toEqual([SEGMENT_3]);
    expect(events).toEqual([
      expect.objectContaining({ data: expect.objectContaining({ file: HISTORY_2, reason: expect.stringMatching(/different history/) }) }),
    ]);
    expect(await repository.objects.exists(archiveKey(0, SEGMENT_2_4))).toBe(false);
    expect(await pusher.pushPending()).toEqual([]);

    // The archive's branch set aside (a failover's set-aside of a reused timeline): the received history goes in at once.
    await repository.archivedWal.setAside([HISTORY_2], divergedFolder());
    expect(await pusher.pushPending()).toEqual([HISTORY_2, SEGMENT_2_4]);
    expect(await stored(repository, HISTORY_2)).toBe(OWN_HISTORY_2);
    expect(pusher.healthReasons).toEqual([]);
  });
});

describe("the pusher's stop", () => {
  test("ends a put in flight to a store that does not answer, instead of waiting out its retries", async () => {
    const home = await tempHome("pusher-stop");
    const store = new DirectoryStore(path.join(home, "repository"));
    let putStarted = false;
    // A store that takes the request and never answers (a silent S3 endpoint): only the put's signal ends it.
    const silent = Object.assign(Object.create(store) as DirectoryStore, {
      put: (_key: string, _body: unknown, options?: { signal?: AbortSignal }) =>
        new Promise((_resolve, reject) => {
          putStarted = true;
          options?.signal?.addEventListener("abort", () => reject(options.signal!.reason as Error), { once: true });
        }),
    });
    const repository = new Repository(silent, null, { spoolDir: walSpoolDir(home) });
    await repository.ensure();
    await mkdir(path.join(home, "repository"), { recursive: true });
    const pusher = pusherFor(repository, { primaryHistory: () => [{ timeline: 1, switchLsn: null }] });
    await receive(repository, SEGMENT_3, "three");
    pusher.start();
    const deadline = Date.now() + 10_000;
    while (!putStarted && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(putStarted).toBe(true);
    const started = Date.now();
    await pusher.stop();
    expect(Date.now() - started).toBeLessThan(2000);
    expect(await repository.archive.names()).toEqual([]);
  });
});
