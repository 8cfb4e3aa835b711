import { randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { mergeSummaries, pageLsn, planFile } from "../../src/backup/change-plan";
import { layeredContent } from "../../src/storage/layered-content";
import { referenceOnHistory } from "../../src/wal/wal-changes";
import { segmentFilesAlong, timelineOfSegment, timelinePath } from "../../src/postgres/timelines";
import { divergedFiles } from "../../src/wal/wal-archiver";
import { emptySpoolPlaceholder, receiveStart, timelineBoundaryPlaceholder } from "../../src/wal/receive-start";
import type { ManifestEntry } from "../../src/backup/manifest";
import { BLOCK_SIZE, BLOCKS_PER_SEGMENT, rangesInSegment, relationFileOf, unionRanges } from "../../src/backup/relation-files";
import type { WalSegmentSummary } from "../../src/wal/waldump-summary";

const MB = 1024 * 1024;

function summary(parts: Partial<WalSegmentSummary>): WalSegmentSummary {
  return {
    formatVersion: 1,
    segment: "000000010000000000000001",
    timeline: 1,
    blocks: {},
    created: [],
    truncated: [],
    databases: [],
    records: 1,
    complete: true,
    error: null,
    ...parts,
  };
}

function entry(path: string, size: number): ManifestEntry {
  return { path, type: "file", size, mtimeMs: 0 };
}

async function collect(source: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of source) parts.push(Buffer.from(chunk)); // chunks are reused: copy
  return Buffer.concat(parts);
}

/** `data` as an async source of `size`-byte chunks, like a decoder's output. */
function chunked(data: Buffer, size: number): Readable {
  const chunks: Buffer[] = [];
  for (let at = 0; at < data.length; at += size) chunks.push(data.subarray(at, at + size));
  return Readable.from(chunks);
}

describe("relation files", () => {
  test("data directory paths map to pg_waldump's relation keys, forks and segments", () => {
    expect(relationFileOf("base/5/16396")).toEqual({
      relation: "1663/5/16396",
      smgrPath: "base/5/16396",
      database: "1663/5",
      fork: "main",
      segment: 0,
    });
    expect(relationFileOf("base/5/16396.3")).toMatchObject({ relation: "1663/5/16396", fork: "main", segment: 3 });
    expect(relationFileOf("base/5/16396_vm")).toMatchObject({ fork: "vm", segment: 0 });
    expect(relationFileOf("global/1262_fsm")).toMatchObject({ relation: "1664/0/1262", smgrPath: "global/1262", fork: "fsm" });
    expect(relationFileOf("pg_tblspc/16500/PG_15_202209061/16400/16501.1")).toMatchObject({
      relation: "16500/16400/16501",
      smgrPath: "pg_tblspc/16500/PG_15_202209061/16400/16501",
      segment: 1,
    });
    expect(relationFileOf("base/5/PG_VERSION")).toBeNull();
    expect(relationFileOf("global/pg_control")).toBeNull();
    expect(relationFileOf("pg_xact/0000")).toBeNull();
  });

  test("ranges: union joins neighbours; a relation's blocks split into its 1 GB segment files", () => {
    expect(
      unionRanges(
        [[5, 9]],
        [
          [1, 2],
          [3, 4],
        ],
        [[20, 20]],
      ),
    ).toEqual([
      [1, 9],
      [20, 20],
    ]);
    const ranges = [
      [10, 12],
      [BLOCKS_PER_SEGMENT - 1, BLOCKS_PER_SEGMENT + 1],
    ] as const;
    expect(rangesInSegment(ranges, 0)).toEqual([
      [10, 12],
      [BLOCKS_PER_SEGMENT - 1, BLOCKS_PER_SEGMENT - 1],
    ]);
    expect(rangesInSegment(ranges, 1)).toEqual([[0, 1]]);
  });
});

describe("which blocks a differential or incremental stores", () => {
  const changes = mergeSummaries([
    summary({ blocks: { "1663/5/16396": { main: [[3, 4]], vm: [[0, 0]] } }, created: ["base/5/16500"] }),
    summary({
      blocks: {
        "1663/5/16396": {
          main: [
            [5, 6],
            [100, 100],
          ],
        },
      },
      truncated: ["base/5/16401"],
      databases: ["1663/16600"],
    }),
  ]);
  const size = 64 * MB;

  test("a relation's main fork: the blocks the WAL touched, plus every block past the reference's length", () => {
    expect(planFile({ path: "base/5/16396", size, mtimeMs: 1 }, entry("base/5/16396", size), changes)).toEqual({
      kind: "blocks",
      blocks: [
        [3, 6],
        [100, 100],
      ],
    });
    expect(planFile({ path: "base/5/16396", size: size + 2 * BLOCK_SIZE, mtimeMs: 1 }, entry("base/5/16396", size), changes)).toEqual({
      kind: "blocks",
      blocks: [
        [3, 6],
        [100, 100],
        [size / BLOCK_SIZE, size / BLOCK_SIZE + 1],
      ],
    });
    expect(planFile({ path: "base/5/16397", size, mtimeMs: 1 }, entry("base/5/16397", size), changes)).toEqual({
      kind: "blocks",
      blocks: [],
    });
  });

  test("a small relation file is block-level too: a database's catalogs are hundreds of them", () => {
    expect(planFile({ path: "base/5/2619", size: 10 * BLOCK_SIZE, mtimeMs: 1 }, entry("base/5/2619", 10 * BLOCK_SIZE), changes)).toEqual({
      kind: "blocks",
      blocks: [],
    });
  });

  test("whole: new files, other forks, created or truncated relations, new databases, shrunk files, mostly changed", () => {
    const whole = (path: string, fileSize = size, reference: ManifestEntry | undefined = entry(path, fileSize)) =>
      planFile({ path, size: fileSize, mtimeMs: 1 }, reference, changes).kind;
    expect(planFile({ path: "base/5/16396", size, mtimeMs: 1 }, undefined, changes).kind).toBe("whole");
    expect(whole("base/5/16396_vm")).toBe("whole");
    expect(whole("base/5/16396_fsm")).toBe("whole");
    expect(whole("base/5/16500")).toBe("whole");
    expect(whole("base/5/16401")).toBe("whole");
    expect(whole("base/16600/2619")).toBe("whole");
    expect(whole("global/pg_control_big", size)).toBe("whole");
    expect(whole("base/5/16396", size, entry("base/5/16396", size + BLOCK_SIZE))).toBe("whole");
    expect(whole("base/5/16396", size * 3, entry("base/5/16396", size))).toBe("whole");
  });

  test("any other file (FSM, VM, pg_control…) is unchanged when its length and mtime are, unless the reference's mtime was too recent to trust", () => {
    const reference = { ...entry("base/5/16396_fsm", 3 * BLOCK_SIZE), mtimeMs: 5000 };
    expect(planFile({ path: "base/5/16396_fsm", size: 3 * BLOCK_SIZE, mtimeMs: 5000 }, reference, changes)).toEqual({
      kind: "blocks",
      blocks: [],
    });
    expect(planFile({ path: "base/5/16396_fsm", size: 3 * BLOCK_SIZE, mtimeMs: 6000 }, reference, changes).kind).toBe("whole");
    expect(
      planFile({ path: "base/5/16396_fsm", size: 3 * BLOCK_SIZE, mtimeMs: 5000 }, { ...reference, mtimeUnreliable: true }, changes).kind,
    ).toBe("whole");
    expect(
      planFile({ path: "global/pg_control", size: 8192, mtimeMs: 5000 }, { ...entry("global/pg_control", 8192), mtimeMs: 5000 }, null),
    ).toEqual({ kind: "blocks", blocks: [] });
  });

  test("without the WAL, a relation file is scanned for page LSNs", () => {
    expect(planFile({ path: "base/5/16396", size, mtimeMs: 1 }, entry("base/5/16396", size), null)).toEqual({
      kind: "scan",
      referenceBlocks: size / BLOCK_SIZE,
    });
    const page = Buffer.alloc(BLOCK_SIZE);
    page.writeUInt32LE(0x16, 0);
    page.writeUInt32LE(0xb374d848, 4);
    expect(pageLsn(page)).toBe(0x16 * 2 ** 32 + 0xb374d848);
  });
});

describe("a file materialised from a chain of backups", () => {
  const blocks = 300;
  const base = randomBytes(blocks * BLOCK_SIZE);
  const blocksOf = (data: Buffer, ranges: ReadonlyArray<readonly [number, number]>) =>
    Buffer.concat(ranges.flatMap(([first, last]) => [data.subarray(first * BLOCK_SIZE, (last + 1) * BLOCK_SIZE)]));

  test("later layers win block by block; the file is cut or extended to its final size", async () => {
    const first = randomBytes((blocks + 10) * BLOCK_SIZE);
    const second = randomBytes((blocks + 10) * BLOCK_SIZE);
    const layer1 = [
      [0, 1],
      [150, 200],
      [blocks, blocks + 9],
    ] as const;
    const layer2 = [
      [1, 3],
      [199, 199],
    ] as const;
    const expected = Buffer.concat([base, Buffer.alloc(10 * BLOCK_SIZE)]);
    for (const [firstBlock, last] of layer1)
      first.copy(expected, firstBlock * BLOCK_SIZE, firstBlock * BLOCK_SIZE, (last + 1) * BLOCK_SIZE);
    for (const [firstBlock, last] of layer2)
      second.copy(expected, firstBlock * BLOCK_SIZE, firstBlock * BLOCK_SIZE, (last + 1) * BLOCK_SIZE);
    const result = await collect(
      layeredContent(chunked(base, 100000), expected.length, [
        { blocks: layer1, content: chunked(blocksOf(first, layer1), 7777) },
        { blocks: layer2, content: chunked(blocksOf(second, layer2), 3 * BLOCK_SIZE) },
      ]),
    );
    expect(result.equals(expected)).toBe(true);
    // No layers, a shorter size: the base cut; no base: zeros and the layer.
    expect((await collect(layeredContent(chunked(base, 5000), 10 * BLOCK_SIZE, []))).equals(base.subarray(0, 10 * BLOCK_SIZE))).toBe(true);
    const onlyLayer = await collect(
      layeredContent(null, 4 * BLOCK_SIZE, [{ blocks: [[2, 2]], content: chunked(base.subarray(0, BLOCK_SIZE), BLOCK_SIZE) }]),
    );
    expect(onlyLayer.equals(Buffer.concat([Buffer.alloc(2 * BLOCK_SIZE), base.subarray(0, BLOCK_SIZE), Buffer.alloc(BLOCK_SIZE)]))).toBe(
      true,
    );
  });

  test("a base read in 1 MiB chunks is passed through where no layer has blocks, and still overlaid where one has", async () => {
    const large = randomBytes(4 * MB + 3 * BLOCK_SIZE);
    const layerBlocks = [[200, 201]] as const; // in the second MiB
    const layerContent = randomBytes(2 * BLOCK_SIZE);
    const expected = Buffer.from(large);
    layerContent.copy(expected, 200 * BLOCK_SIZE);
    const result = await collect(
      layeredContent(chunked(large, MB), large.length, [{ blocks: layerBlocks, content: chunked(layerContent, BLOCK_SIZE) }]),
    );
    expect(result.equals(expected)).toBe(true);
  });

  test("a layer shorter or longer than its blocks is an error", async () => {
    await expect(
      collect(
        layeredContent(chunked(base, 9000), base.length, [{ blocks: [[0, 1]], content: chunked(base.subarray(0, BLOCK_SIZE), 100) }]),
      ),
    ).rejects.toThrow(/ends early/);
    await expect(
      collect(
        layeredContent(chunked(base, 9000), base.length, [{ blocks: [[0, 0]], content: chunked(base.subarray(0, 2 * BLOCK_SIZE), 100) }]),
      ),
    ).rejects.toThrow(/holds more/);
  });
});

describe("the WAL between a reference and a backup, along the timeline history", () => {
  // Timeline 3: branched off 1 at 0/5000A00 (inside segment 5), off 2 at 0/8000000 (a segment boundary).
  const history = "1\t0/5000A00\tno recovery target specified\n\n2\t0/8000000\tbefore 2026-11-26\n";
  const path = timelinePath(3, history);

  test("a .history file becomes the steps that lead to the timeline", () => {
    expect(path).toEqual([
      { timeline: 1, switchLsn: "0/5000A00" },
      { timeline: 2, switchLsn: "0/8000000" },
      { timeline: 3, switchLsn: null },
    ]);
    expect(timelinePath(1, null)).toEqual([{ timeline: 1, switchLsn: null }]);
  });

  test("each segment is read from the timeline that holds all of it: the one a switch falls in from the new timeline", () => {
    expect([3, 4, 5, 6, 7, 8, 9].map((segment) => timelineOfSegment(path, segment))).toEqual([1, 1, 2, 2, 2, 3, 3]);
  });

  test("the files a span of WAL is read from follow the history: an ancestor's before the branch", () => {
    // From a point on timeline 1 (a reference taken just after the failover, on a replica not yet past the branch) to one on 3.
    expect(segmentFilesAlong(path, "0/4000100", "0/9000010")).toEqual([
      { timeline: 1, segment: 4 },
      { timeline: 2, segment: 5 },
      { timeline: 2, segment: 6 },
      { timeline: 2, segment: 7 },
      { timeline: 3, segment: 8 },
      { timeline: 3, segment: 9 },
    ]);
    expect(segmentFilesAlong(timelinePath(1, null), "0/3000000", "0/3FFFFFF")).toEqual([{ timeline: 1, segment: 3 }]);
  });
});

describe("whether a backup can build on a reference after a failover", () => {
  test("only on a reference that ended before the new timeline branched off", () => {
    const history = timelinePath(2, "1\t0/5000A00\tno recovery target specified\n");
    const reference = (stopLsn: string, timeline = 1) => ({ id: "R", timeline, stopLsn });
    expect(referenceOnHistory(reference("0/4000100"), history)).toBeNull();
    expect(referenceOnHistory(reference("0/5000A00"), history)).toBeNull();
    expect(referenceOnHistory(reference("0/5001000"), history)).toMatch(/ends at 0\/5001000, after timeline 2 branched off at 0\/5000A00/);
    expect(referenceOnHistory(reference("0/1000000", 3), history)).toMatch(/timeline 3 is not an ancestor of timeline 2/);
    expect(referenceOnHistory(reference("0/9000000", 2), history)).toBeNull();
  });
});

describe("archived WAL off the primary's history", () => {
  test("files past the branch point of an ancestor, or of a timeline off the history, are set aside; the rest stays", () => {
    // Timeline 2 branched off 1 at 0/5000230 (inside segment 5).
    const history = timelinePath(2, "1\t0/5000230\tno recovery target specified\n");
    const names = [
      "000000010000000000000004",
      "000000010000000000000005",
      "000000010000000000000006",
      "00000001000000000000000A.partial",
      "000000020000000000000005",
      "000000020000000000000006.partial",
      "000000030000000000000009",
      "00000002.history",
    ];
    expect(divergedFiles(names, history)).toEqual([
      "000000010000000000000005",
      "000000010000000000000006",
      "00000001000000000000000A.partial",
      "000000030000000000000009",
    ]);
    expect(divergedFiles(["000000010000000000000004", "000000010000000000000005.partial"], timelinePath(1, null))).toEqual([]);
  });
});

describe("where pg_receivewal resumes after a failover", () => {
  test("after the newest complete segment, at the start of a newer .partial, on that file's timeline", () => {
    expect(receiveStart([])).toBeNull();
    expect(receiveStart(["000000010000000000000004", "00000002.history", "000000010000000000000003"])).toEqual({ timeline: 1, segment: 5 });
    expect(receiveStart(["000000010000000000000004", "000000020000000000000005.partial"])).toEqual({ timeline: 2, segment: 5 });
    expect(receiveStart(["000000010000000000000005.partial", "000000010000000000000005"])).toEqual({ timeline: 1, segment: 6 });
  });

  test("an empty spool resumes where the repository's archive ends, on the primary's timeline there (review 23)", () => {
    // Timeline 2 branched off 1 inside segment 6: a new primary's slot starts later, past WAL the archive lacks.
    const history = timelinePath(2, "1\t0/6000100\tno recovery target specified\n");
    const archived = ["000000010000000000000004", "000000010000000000000005", "00000002.history"];
    expect(emptySpoolPlaceholder([], archived, history)).toBe("000000020000000000000006.partial");
    expect(emptySpoolPlaceholder(["00000002.history"], ["000000010000000000000004"], history)).toBe("000000010000000000000005.partial");
    // The spool has a segment of its own (pg_receivewal resumes from it), or the archive none (a new archive): nothing.
    expect(emptySpoolPlaceholder(["000000020000000000000007.partial"], archived, history)).toBeNull();
    expect(emptySpoolPlaceholder(["000000010000000000000005"], archived, history)).toBeNull();
    expect(emptySpoolPlaceholder([], [], history)).toBeNull();
  });

  test("an archive ending exactly at its timeline's switch point resumes on the next timeline", () => {
    // Timeline 3: branched off 1 at 0/5000000 and off 2 at 0/8000A00.
    const history = timelinePath(3, "1\t0/5000000\tno recovery target specified\n2\t0/8000A00\tno recovery target specified\n");
    expect(timelineBoundaryPlaceholder(["000000010000000000000003", "000000010000000000000004"], history)).toBe(
      "000000020000000000000005.partial",
    );
    // Inside a segment: the new timeline's copy of it is served; nothing needed.
    expect(timelineBoundaryPlaceholder(["000000020000000000000007"], history)).toBeNull();
    // Before the switch, after it, or once the next timeline is begun: nothing needed.
    expect(timelineBoundaryPlaceholder(["000000010000000000000003"], history)).toBeNull();
    expect(timelineBoundaryPlaceholder(["000000010000000000000004", "000000020000000000000005.partial"], history)).toBeNull();
    expect(timelineBoundaryPlaceholder(["000000030000000000000009"], history)).toBeNull();
    // An empty archive, or a timeline off the history, is not this function's case.
    expect(timelineBoundaryPlaceholder([], history)).toBeNull();
    expect(timelineBoundaryPlaceholder(["000000040000000000000004"], history)).toBeNull();
  });

  test("a timeline left where it began is passed over too", () => {
    const history = timelinePath(3, "1\t0/5000000\tno recovery target specified\n2\t0/5000000\tno recovery target specified\n");
    expect(timelineBoundaryPlaceholder(["000000010000000000000004"], history)).toBe("000000030000000000000005.partial");
  });
});
