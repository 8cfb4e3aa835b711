import { expect } from "@jest/globals";
import { open, readdir, rename, rm, writeFile } from "node:fs/promises";
import { Readable } from "node:stream";
import { buffer } from "node:stream/consumers";
import path from "node:path";
import { CHUNK_SIZE, HEADER_SIZE } from "../../src/repository/object-codec";
import { archiveKey, divergedKey } from "../../src/repository/repository-layout";
import { divergedFolder } from "../../src/storage/wal-archive";
import { Repository, walSpoolDir } from "../../src/storage/repository";
import { WalIndex } from "../../src/wal/wal-index";
import { archiveIdentity } from "../../src/wal/archive-identity";
import { pushableNames, type WalPusher } from "../../src/wal/wal-pusher";
import { tempHome } from "../helpers/home";
import { pusherFor } from "../helpers/wal-pusher";
import { segmentStart } from "../helpers/wal-segment";

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

async function pusherHome(label: string): Promise<{ repository: Repository; pusher: WalPusher }> {
  const home = await tempHome(label);
  const repository = new Repository(path.join(home, "repository"), null, { spoolDir: walSpoolDir(home) });
  await repository.ensure();
  const pusher = pusherFor(repository);
  return { repository, pusher };
}

async function receive(repository: Repository, name: string, content: string): Promise<void> {
  await writeFile(path.join(repository.spoolDir, name), content, { mode: 0o600 });
}

async function stored(repository: Repository, name: string): Promise<string> {
  return (await buffer(await repository.objects.getStream(archiveKey(0, name)))).toString("utf8");
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
    await receive(repository, HISTORY_2, "1\t0/4000000\tno recovery target specified\n");
    await receive(repository, `${SEGMENT_5}.partial`, "five, being received");

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
    await receive(repository, HISTORY_2, "another branch\n");

    expect(await pusher.pushPending()).toEqual([]);
    expect(await stored(repository, HISTORY_2)).toBe("the archive's own\n");
    // Refused once, not retried at every pass: were it compared again, the archive's now being the received content
    // would make it pushed.
    await repository.objects.putStream(archiveKey(0, HISTORY_2), Readable.from([Buffer.from("another branch\n")]));
    expect(await pusher.pushPending()).toEqual([]);
    expect(await repository.archive.has(HISTORY_2)).toBe(false);

    // The same content as the archive's (put by another instance since the listing): taken as pushed, kept as it was.
    await repository.objects.putStream(archiveKey(0, HISTORY_3), Readable.from([Buffer.from("the same\n")]));
    await receive(repository, HISTORY_3, "the same\n");
    expect(await pusher.pushPending()).toEqual([HISTORY_3]);
    expect(await repository.archive.has(HISTORY_3)).toBe(true);
    expect(await stored(repository, HISTORY_3)).toBe("the same\n");
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
  test("names are the union; a set-aside moves the archive's objects under diverged/<time>/ and out of the index", async () => {
    const { repository, pusher } = await pusherHome("archived-wal-aside");
    await receive(repository, SEGMENT_3, "three");
    await receive(repository, SEGMENT_4, "four");
    await pusher.pushPending();
    // The receiving directory lost its copy of segment 4 (wiped): the archive still names it.
    await rm(path.join(repository.spoolDir, SEGMENT_4));
    await receive(repository, `${SEGMENT_5}.partial`, "five");
    expect(await repository.archivedWal.names()).toEqual([SEGMENT_3, SEGMENT_4, `${SEGMENT_5}.partial`]);

    const folder = divergedFolder(new Date("2026-12-07T12:00:00.000Z"));
    const aside = await repository.archivedWal.setAside([SEGMENT_4, `${SEGMENT_5}.partial`], folder);
    expect(aside.moved).toEqual([SEGMENT_4, `${SEGMENT_5}.partial`]);
    expect(await repository.objects.exists(archiveKey(0, SEGMENT_4))).toBe(false);
    expect((await buffer(await repository.objects.getStream(divergedKey(0, folder[1]!, SEGMENT_4)))).toString()).toBe("four");
    expect(await repository.archive.names()).toEqual([SEGMENT_3]);
    expect(await repository.archivedWal.names()).toEqual([SEGMENT_3, "diverged"]);
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
    for (const name of [SEGMENT_3, SEGMENT_4, SEGMENT_5, HISTORY_2]) await receive(repository, name, name);
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

describe("the archive's identity", () => {
  test("is read from the archive's newest segment by a range read, the receiving directory wiped", async () => {
    const { repository, pusher } = await pusherHome("archived-identity");
    await writeFile(path.join(repository.spoolDir, SEGMENT_3), segmentStart(7001n), { mode: 0o600 });
    await writeFile(path.join(repository.spoolDir, SEGMENT_4), Buffer.concat([segmentStart(7002n), Buffer.alloc(3 * CHUNK_SIZE, 7)]), {
      mode: 0o600,
    });
    await pusher.pushPending();
    for (const name of [SEGMENT_3, SEGMENT_4]) await rm(path.join(repository.spoolDir, name));
    // Segment 4's object is 3 MiB; a byte of its second chunk damaged: a whole read fails (REPOSITORY_CORRUPT),
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
