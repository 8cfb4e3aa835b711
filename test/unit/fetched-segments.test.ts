import { expect } from "@jest/globals";
import { randomBytes } from "node:crypto";
import { readdir, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { Readable } from "node:stream";
import { DirectoryStore } from "../../src/repository/directory-store";
import { archiveKey } from "../../src/repository/repository-layout";
import { RepositoryStore } from "../../src/repository/repository-store";
import { FetchedSegments } from "../../src/wal/fetched-segments";
import { tempHome } from "../helpers/home";

/**
 * Segments fetched from the archive's objects into root's scratch for
 * pg_waldump: streamed and checked by the codec, shared between readers,
 * never more than the limit in scratch at once, nothing left after.
 */
const A = "000000010000000000000003";
const B = "000000010000000000000004";
const C = "000000010000000000000005";
const D = "000000010000000000000006";

async function archiveWith(label: string, names: readonly string[]) {
  const home = await tempHome(label);
  const objects = new RepositoryStore(new DirectoryStore(path.join(home, "repository")));
  const contents = new Map<string, Buffer>();
  for (const name of names) {
    // Several of the codec's 1 MiB chunks: streamed and checked chunk by chunk.
    const content = randomBytes(3 * 1024 * 1024 + 17);
    contents.set(name, content);
    await objects.putStream(archiveKey(0, name), Readable.from([content]));
  }
  const scratch = path.join(home, "tmp");
  return { objects, contents, scratch };
}

const waitedOn = <T>(promise: Promise<T>, ms: number): Promise<"waiting" | T> =>
  Promise.race([promise, new Promise<"waiting">((resolve) => setTimeout(() => resolve("waiting"), ms))]);

describe("segments fetched from the archive into scratch", () => {
  test("fetched whole into root's 0700 scratch as 0600 files, shared, never more than the limit: a reader waits for room", async () => {
    const { objects, contents, scratch } = await archiveWith("fetched-limit", [A, B, C]);
    const fetched = new FetchedSegments({ objects, generation: 0, scratchDir: scratch, limit: 2 });

    const [a, b] = await fetched.acquire([A, B]);
    // Buffer.equals: Jest's deep equality walks megabytes byte by byte.
    expect((await readFile(a!.file)).equals(contents.get(A)!)).toBe(true);
    expect((await readFile(b!.file)).equals(contents.get(B)!)).toBe(true);
    expect((await stat(scratch)).mode & 0o777).toBe(0o700);
    expect((await stat(a!.file)).mode & 0o777).toBe(0o600);

    // Both held: no room for C until one is released.
    const waiting = fetched.acquire([C]);
    expect(await waitedOn(waiting, 300)).toBe("waiting");
    expect(await readdir(scratch)).toHaveLength(2);
    a!.release();
    const [c] = await waiting;
    expect((await readFile(c!.file)).equals(contents.get(C)!)).toBe(true);
    // A made the room; B (held) and C are what scratch holds.
    expect((await readdir(scratch)).sort()).toEqual([path.basename(b!.file), path.basename(c!.file)].sort());

    // B asked for again while held: the same file, not fetched twice.
    const [again] = await fetched.acquire([B]);
    expect(again!.file).toBe(b!.file);
    for (const held of [b, c, again]) held!.release();
    expect(fetched.held).toBe(2);
    await fetched.clear();
    expect(fetched.held).toBe(0);
    expect(await readdir(scratch)).toEqual([]);
  });

  test("a segment the archive does not have is null; one whose object is damaged fails, and leaves no file", async () => {
    const { objects, scratch } = await archiveWith("fetched-damaged", [A]);
    const fetched = new FetchedSegments({ objects, generation: 0, scratchDir: scratch, limit: 2 });
    expect(await fetched.acquire([D])).toEqual([null]);

    const file = path.join(objects.location, archiveKey(0, A));
    const damaged = await readFile(file);
    damaged[damaged.length - 100] = damaged[damaged.length - 100]! ^ 0x01;
    await objects.store.put(archiveKey(0, A), Readable.from([damaged]));
    await expect(fetched.acquire([A])).rejects.toMatchObject({ code: "REPOSITORY_CORRUPT" });
    await fetched.clear();
    expect(await readdir(scratch)).toEqual([]);
    expect(fetched.held).toBe(0);
  });
});
