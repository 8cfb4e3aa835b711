import { expect } from "@jest/globals";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { buffer } from "node:stream/consumers";
import { archiveKey, divergedKey } from "../../src/repository/repository-layout";
import { Repository, walSpoolDir } from "../../src/storage/repository";
import { divergedFolder } from "../../src/storage/wal-archive";
import { ArchivedWalSet, type ArchivedWalView } from "../../src/wal/archived-wal-set";
import { tempHome } from "../helpers/home";
import { pusherFor } from "../helpers/wal-pusher";
import { walSegment } from "../helpers/wal-segment";

/**
 * The WAL archive of two repositories (directories over one data home's
 * spool, as the service opens them) seen as one: names and reads from
 * any, histories and set-asides written to each.
 */
const SYSTEM = 7101n;
const ONLY_FIRST = "000000010000000000000004";
const IN_BOTH = "000000010000000000000005";

async function twoRepositories(): Promise<{ first: Repository; second: Repository; set: ArchivedWalSet }> {
  const home = await tempHome("archived-wal-set");
  const spoolDir = walSpoolDir(home);
  const first = new Repository(path.join(home, "repository"), null, { spoolDir });
  const second = new Repository(path.join(home, "second"), null, { spoolDir });
  await first.ensure();
  await second.ensure();
  return { first, second, set: new ArchivedWalSet(() => [first.archivedWal, second.archivedWal]) };
}

async function receive(repository: Repository, name: string, marker: string): Promise<void> {
  await writeFile(path.join(repository.spoolDir, name), walSegment(name, SYSTEM, marker), { mode: 0o600 });
}

async function objectMarker(repository: Repository, key: string): Promise<string> {
  const segment = await buffer(await repository.objects.getStream(key));
  return segment.subarray(64, segment.indexOf(0, 64)).toString("utf8");
}

describe("ArchivedWalSet", () => {
  test("names are every repository's and the spool's; a read takes the first repository that has the file", async () => {
    const { first, second, set } = await twoRepositories();
    await receive(first, ONLY_FIRST, "first only");
    await pusherFor(first).pushPending();
    await first.spool.remove(ONLY_FIRST);
    await receive(first, IN_BOTH, "both");
    await pusherFor(second).pushPending();
    // Repository 2 alone has IN_BOTH so far (first's pusher has not run since): the union has both names.
    expect(await first.archive.names()).toEqual([ONLY_FIRST]);
    expect(await second.archive.names()).toEqual([IN_BOTH]);
    expect(await set.names()).toEqual([ONLY_FIRST, IN_BOTH]);
    await first.spool.remove(IN_BOTH);
    const read = await set.read(IN_BOTH);
    expect(read?.subarray(64, 68).toString("utf8")).toBe("both");
    expect(await set.read("000000010000000000000009")).toBeNull();
  });

  test("a history is added to every repository that lacks it", async () => {
    const { first, second, set } = await twoRepositories();
    const history = "1\t0/3000000\tno recovery target specified\n";
    expect(await set.addHistory(2, history)).toBe("added");
    for (const repository of [first, second]) expect(await repository.archive.names()).toContain("00000002.history");
    expect(await set.addHistory(2, history)).toBe("present");
    expect(await set.readHistory(2)).toBe(history);
  });

  test("a set-aside moves the file in each repository that holds it, and the spool's copy goes", async () => {
    const { first, second, set } = await twoRepositories();
    await receive(first, IN_BOTH, "abandoned branch");
    await pusherFor(first).pushPending();
    await pusherFor(second).pushPending();
    await receive(first, ONLY_FIRST, "first's branch");
    await pusherFor(first).pushPending();
    const folder = divergedFolder();
    const aside = await set.setAside([IN_BOTH, ONLY_FIRST], folder);
    expect(aside.moved).toEqual([ONLY_FIRST, IN_BOTH]);
    // Neither repository serves them as the cluster's WAL any more; each keeps its own copy under diverged/.
    for (const repository of [first, second]) {
      expect(await repository.archive.names()).toEqual([]);
      expect(await repository.objects.exists(archiveKey(0, IN_BOTH))).toBe(false);
      expect(await objectMarker(repository, divergedKey(0, folder.at(-1)!, IN_BOTH))).toBe("abandoned branch");
    }
    // ONLY_FIRST was still in the spool: repository 2, set aside first, kept the spool's copy of it too.
    expect(await objectMarker(second, divergedKey(0, folder.at(-1)!, ONLY_FIRST))).toBe("first's branch");
    expect(await first.spool.names()).toEqual([]);
    // Again with the same folder (a failover resumed): nothing left to move, nothing lost.
    expect((await set.setAside([IN_BOTH, ONLY_FIRST], folder)).moved).toEqual([]);
    expect(await objectMarker(first, divergedKey(0, folder.at(-1)!, ONLY_FIRST))).toBe("first's branch");
  });

  test("a set-aside a repository misses (its store down) is owed to it and done once it answers; all failing is the error", async () => {
    const { first, second } = await twoRepositories();
    await receive(first, IN_BOTH, "abandoned branch");
    await pusherFor(first).pushPending();
    await pusherFor(second).pushPending();
    let down = true;
    const unreachable = () => Promise.reject(new Error("repository 2 unreachable"));
    // Repository 2 as the set sees it while its store refuses every request, then once it answers again.
    const flaky: ArchivedWalView = {
      names: () => (down ? unreachable() : second.archivedWal.names()),
      read: (name) => (down ? unreachable() : second.archivedWal.read(name)),
      readHistory: (timeline) => (down ? unreachable() : second.archivedWal.readHistory(timeline)),
      readStart: (name, bytes) => (down ? unreachable() : second.archivedWal.readStart(name, bytes)),
      addHistory: (timeline, content) => (down ? unreachable() : second.archivedWal.addHistory(timeline, content)),
      setAside: (names, folder) => (down ? unreachable() : second.archivedWal.setAside(names, folder)),
    };
    const set = new ArchivedWalSet(() => [first.archivedWal, flaky]);
    const folder = divergedFolder();
    expect((await set.setAside([IN_BOTH], folder)).moved).toEqual([IN_BOTH]);
    expect(await first.archive.names()).toEqual([]);
    expect(set.owes(flaky)).toBe(true);
    expect(set.owes(first.archivedWal)).toBe(false);
    // Still down: still owed, the failure returned.
    expect((await set.settle())?.message).toBe("repository 2 unreachable");
    expect(set.owes(flaky)).toBe(true);
    expect(await second.objects.exists(archiveKey(0, IN_BOTH))).toBe(true);
    // Back: done, its abandoned file set aside like the first's.
    down = false;
    expect(await set.settle()).toBeNull();
    expect(set.owes(flaky)).toBe(false);
    expect(await second.objects.exists(archiveKey(0, IN_BOTH))).toBe(false);
    expect(await objectMarker(second, divergedKey(0, folder.at(-1)!, IN_BOTH))).toBe("abandoned branch");
    // Every repository failing: the set-aside fails, nothing owed in its place.
    down = true;
    await expect(new ArchivedWalSet(() => [flaky]).setAside([IN_BOTH], folder)).rejects.toThrow("repository 2 unreachable");
  });

  test("a repository that cannot be listed is left out while another answers; none answering is an error", async () => {
    const { first } = await twoRepositories();
    await receive(first, IN_BOTH, "x");
    await pusherFor(first).pushPending();
    // A store that refuses every request (what an unreachable bucket answers), as the set sees a repository.
    const unreachable = () => Promise.reject(new Error("repository 2 unreachable"));
    const down: ArchivedWalView = {
      names: unreachable,
      read: unreachable,
      readHistory: unreachable,
      readStart: unreachable,
      addHistory: unreachable,
      setAside: unreachable,
    };
    const set = new ArchivedWalSet(() => [down, first.archivedWal]);
    expect(await set.names()).toEqual([IN_BOTH]);
    // A read passes over the failing one to the next that has the file; one none has is the failure, not "absent".
    expect((await set.read(IN_BOTH))?.length).toBeGreaterThan(0);
    await expect(set.read("000000010000000000000009")).rejects.toThrow("repository 2 unreachable");
    await expect(new ArchivedWalSet(() => [down]).names()).rejects.toThrow("repository 2 unreachable");
  });
});
