import { expect } from "@jest/globals";
import path from "node:path";
import { ErrorCode } from "../../src/errors";
import { DirectoryStore } from "../../src/repository/directory-store";
import {
  archiveKey,
  bundleKey,
  dataKey,
  legacyWalSummaryKey,
  manifestKey,
  manifestsPrefix,
  summarizedSegmentOf,
  walFileNameOf,
  walSummaryKey,
} from "../../src/repository/repository-layout";
import { RepositoryStore } from "../../src/repository/repository-store";
import { newDataKey } from "../../src/repository/repository-keys";
import { assertObjectKey } from "../../src/repository/object-store";
import { tempHome } from "../helpers/home";

describe("the repository's key layout", () => {
  test("every kind of object has its place; a later generation writes under its own prefix", () => {
    expect(manifestKey(0, "20261207T093000Z-F")).toBe("manifests/20261207T093000Z-F");
    expect(manifestKey(2, "20261207T093000Z-F")).toBe("g2/manifests/20261207T093000Z-F");
    expect(dataKey(0, "20261207T093000Z-I", 7)).toBe("backups/20261207T093000Z-I/data/00000007");
    expect(bundleKey(1, "20261207T093000Z-D", 12)).toBe("g1/backups/20261207T093000Z-D/bundles/00000012");
    expect(archiveKey(0, "000000010000000A000000FF")).toBe("archive/000000010000000A/000000010000000A000000FF");
    expect(archiveKey(0, "00000002.history")).toBe("archive/00000002.history");
    expect(walSummaryKey(0, "000000010000000A000000FF")).toBe("wal-summary/000000010000000A000000FF");
    for (const key of [manifestKey(3, "20261207T093000Z-F"), dataKey(0, "20261207T093000Z-I", 0), archiveKey(1, "00000003.history")]) {
      expect(() => assertObjectKey(key)).not.toThrow();
    }
  });

  test("an archive key reads back as its WAL file; nothing else under the prefix does", () => {
    for (const name of ["000000010000000A000000FF", "00000002.history"]) expect(walFileNameOf(0, archiveKey(0, name))).toBe(name);
    expect(walFileNameOf(1, archiveKey(1, "000000010000000A000000FF"))).toBe("000000010000000A000000FF");
    expect(walFileNameOf(0, "archive/000000010000000B/000000010000000A000000FF")).toBeNull(); // in another segment's group
    expect(walFileNameOf(0, "archive/000000010000000A/000000010000000A000000FF.partial")).toBeNull();
    expect(walFileNameOf(0, "g1/archive/00000002.history")).toBeNull();
    expect(walFileNameOf(0, manifestsPrefix(0) + "x")).toBeNull();
  });

  test("a summary key, an object's or a legacy file's, reads back as its segment; nothing else under the prefix does", () => {
    const segment = "000000010000000A000000FF";
    expect(legacyWalSummaryKey(0, segment)).toBe("wal-summary/000000010000000A000000FF.json");
    expect(summarizedSegmentOf(0, walSummaryKey(0, segment))).toBe(segment);
    expect(summarizedSegmentOf(0, legacyWalSummaryKey(0, segment))).toBe(segment);
    expect(summarizedSegmentOf(2, walSummaryKey(2, segment))).toBe(segment);
    expect(summarizedSegmentOf(0, walSummaryKey(2, segment))).toBeNull();
    // A temporary file the legacy writer left, or anything that is not a segment's.
    expect(summarizedSegmentOf(0, `wal-summary/${segment}.json.tmp-12-ab12cd34`)).toBeNull();
    expect(summarizedSegmentOf(0, "wal-summary/notes")).toBeNull();
  });

  test("what is no backup id, segment or sequence has no place (a defect, refused)", () => {
    expect(() => manifestKey(0, "../x")).toThrow(expect.objectContaining({ code: ErrorCode.BadUserInput }));
    expect(() => archiveKey(0, "000000010000000A000000FF.partial")).toThrow(expect.objectContaining({ code: ErrorCode.Internal }));
    expect(() => dataKey(0, "20261207T093000Z-F", -1)).toThrow(expect.objectContaining({ code: ErrorCode.Internal }));
    expect(() => walSummaryKey(-1, "000000010000000A000000FF")).toThrow(expect.objectContaining({ code: ErrorCode.Internal }));
  });
});

describe("the repository's objects through RepositoryStore", () => {
  test("JSON documents round-trip, encrypted or not; an absent one is null; a damaged one is REPOSITORY_CORRUPT, never null", async () => {
    const root = path.join(await tempHome("repository-store"), "repository");
    const key = newDataKey();
    const store = new RepositoryStore(new DirectoryStore(root), {
      encrypted: true,
      lookup: (id) => Promise.resolve(id.equals(key.id) ? key : null),
    });
    await store.writeJson("manifests/20261207T093000Z-F", { id: "20261207T093000Z-F", status: "completed" }, { dataKey: key });
    await store.writeJson("manifests/20261207T093100Z-F", { id: "20261207T093100Z-F" }, { dataKey: key });
    expect(await store.readJson("manifests/20261207T093000Z-F")).toEqual({ id: "20261207T093000Z-F", status: "completed" });
    expect(await store.readJson("manifests/20261207T093100Z-F")).toEqual({ id: "20261207T093100Z-F" });
    // Written as the repository is, or not at all; and read as the repository is, whatever a header says.
    await expect(store.writeJson("manifests/20261207T093200Z-F", {})).rejects.toMatchObject({ code: ErrorCode.Internal });
    const plain = new RepositoryStore(new DirectoryStore(root));
    await plain.writeJson("manifests/20261207T093200Z-F", { id: "forged, checksummed: its check needs no key" });
    await expect(store.readJson("manifests/20261207T093200Z-F")).rejects.toMatchObject({
      code: ErrorCode.RepositoryCorrupt,
      message: expect.stringContaining("not encrypted, in an encrypted repository"),
    });
    await expect(plain.readJson("manifests/20261207T093000Z-F")).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
    await plain.store.delete(["manifests/20261207T093200Z-F"]);
    expect(await store.readJson("manifests/20261207T093200Z-F")).toBeNull();
    expect((await store.list("manifests/")).map((info) => info.key)).toEqual([
      "manifests/20261207T093000Z-F",
      "manifests/20261207T093100Z-F",
    ]);
    // A file not in Relevo's stored form where a manifest should be: not read as absent.
    await new DirectoryStore(root).put("manifests/20261207T093300Z-F", Buffer.from('{"id":"forged"}'));
    await expect(store.readJson("manifests/20261207T093300Z-F")).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
    expect(await store.deleteAll("manifests/")).toBe(3);
    expect(await store.list("manifests/")).toEqual([]);
  });
});
