import { expect } from "@jest/globals";
import { randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { Readable } from "node:stream";
import { ErrorCode } from "../../src/errors";
import { DirectoryStore } from "../../src/repository/directory-store";
import type { ObjectStore } from "../../src/repository/object-store";
import {
  HEADER_SIZE,
  getObject,
  getObjectRange,
  openObjectReader,
  putObject,
  readObject,
  type DataKey,
  type DataKeyLookup,
  type ObjectMode,
  type ReadPolicy,
  UNENCRYPTED,
} from "../../src/repository/object-codec";
import {
  cipherPassWrong,
  deriveRepositoryKey,
  keyCheck,
  keyCheckPasses,
  newDataKey,
  newSalt,
  unwrapDataKey,
  wrapDataKey,
} from "../../src/repository/repository-keys";
import { tempHome } from "../helpers/home";

/** Small chunks, so that every boundary case costs a few bytes (the format is the same at 1 MiB). */
const CHUNK = 64;
const dataKey = newDataKey();
const lookup: DataKeyLookup = (id) => Promise.resolve(id.equals(dataKey.id) ? dataKey : null);
const encrypted: ReadPolicy = { encrypted: true, lookup };
const modes: Array<[string, ObjectMode]> = [
  ["checksummed", { encrypted: false }],
  ["encrypted", { encrypted: true, dataKey }],
];

describe.each(modes)("stored objects, %s", (_name, mode) => {
  let store: DirectoryStore;
  let root: string;
  beforeEach(async () => {
    root = path.join(await tempHome("codec"), "store");
    store = new DirectoryStore(root);
  });
  const file = (key: string): string => path.join(root, ...key.split("/"));
  // What the repository expects of its objects: the mode they were written in.
  const policy: ReadPolicy = mode.encrypted ? encrypted : UNENCRYPTED;
  // A chunk's stored overhead: 16 bytes of checksum, or 12 of nonce and 16 of tag.
  const overhead = mode.encrypted ? 28 : 16;

  test.each([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])("%i bytes come back whole and by any range", async (size) => {
    const content = randomBytes(size);
    // Streamed in uneven pieces: chunking does not depend on how the source is cut.
    const pieces = [content.subarray(0, 5), content.subarray(5, 100), content.subarray(100)].filter((piece) => piece.length > 0);
    await putObject(store, "o/content", Readable.from(pieces), mode, { chunkSize: CHUNK });
    expect(await readObject(store, "o/content", policy)).toEqual(content);
    for (const [start, end] of [
      [0, 1],
      [0, size],
      [CHUNK - 1, CHUNK + 1],
      [size - 1, size],
      [CHUNK, 2 * CHUNK],
      [10, size - 3],
    ] as const) {
      if (!(start >= 0 && start < end && end <= size)) continue;
      expect(await getObjectRange(store, "o/content", { start, end }, policy)).toEqual(content.subarray(start, end));
    }
  });

  test("plaintext is not stored as such when encrypted; the header names the data key", async () => {
    const content = Buffer.from("PLAINTEXT-MARKER ".repeat(20));
    await putObject(store, "o/secret", content, mode, { chunkSize: CHUNK });
    const stored = await readFile(file("o/secret"));
    expect(stored.subarray(0, 4).toString()).toBe("RLVO");
    expect(stored.includes(Buffer.from("PLAINTEXT-MARKER"))).toBe(!mode.encrypted);
    expect(stored.subarray(12, 28).equals(dataKey.id)).toBe(mode.encrypted);
  });

  /**
   * Each damage to the stored bytes, and the first chunk it spoils: the read
   * fails with REPOSITORY_CORRUPT naming the object, having released only
   * (checked) bytes of the chunks before it.
   */
  test.each([
    ["a flipped byte in a middle chunk", 1, (bytes: Buffer) => flip(bytes, HEADER_SIZE + CHUNK + overhead + 40)],
    ["a flipped byte in the last chunk's proof", 3, (bytes: Buffer) => flip(bytes, bytes.length - 1)],
    ["the last chunk dropped", 2, (bytes: Buffer) => bytes.subarray(0, bytes.length - lastChunkLength(bytes))],
    ["the object cut mid-chunk", 3, (bytes: Buffer) => bytes.subarray(0, bytes.length - 10)],
    ["two chunks swapped", 0, (bytes: Buffer) => swapFirstTwoChunks(bytes)],
    ["a header not Relevo's", 0, (bytes: Buffer) => flip(bytes, 0)],
    ["the header's mode switched (a downgrade or upgrade)", 0, (bytes: Buffer) => setByte(bytes, 5, bytes[5] === 1 ? 0 : 1)],
    ["the header's key id changed", 0, (bytes: Buffer) => flip(bytes, 20)],
    ["a reserved header byte changed", 0, (bytes: Buffer) => flip(bytes, 30)],
  ])("%s is refused, and no byte of chunk %i on is released", async (_damage, spoiled, damage) => {
    const content = randomBytes(3 * CHUNK + 20);
    await putObject(store, "o/damaged", content, mode, { chunkSize: CHUNK });
    await writeFile(file("o/damaged"), damage(await readFile(file("o/damaged"))));
    const released: Buffer[] = [];
    const failure = await (async () => {
      for await (const chunk of await getObject(store, "o/damaged", policy)) released.push(chunk as Buffer);
    })().then(
      () => null,
      (error: unknown) => error,
    );
    expect(failure).toMatchObject({ code: ErrorCode.RepositoryCorrupt, message: expect.stringContaining("o/damaged") as unknown });
    const got = Buffer.concat(released);
    expect(got.length).toBeLessThanOrEqual(spoiled * CHUNK);
    expect(got).toEqual(content.subarray(0, got.length));
  });

  test("an object copied under another key fails its check there (each chunk is bound to its key)", async () => {
    await putObject(store, "o/original", randomBytes(100), mode, { chunkSize: CHUNK });
    await store.put("o/copy", await readFile(file("o/original")));
    await expect(readObject(store, "o/copy", policy)).rejects.toMatchObject({ code: ErrorCode.RepositoryCorrupt });
  });

  function lastChunkLength(bytes: Buffer): number {
    return (bytes.length - HEADER_SIZE) % (CHUNK + overhead) || CHUNK + overhead;
  }
  function swapFirstTwoChunks(bytes: Buffer): Buffer {
    const stored = CHUNK + overhead;
    const first = bytes.subarray(HEADER_SIZE, HEADER_SIZE + stored);
    const second = bytes.subarray(HEADER_SIZE + stored, HEADER_SIZE + 2 * stored);
    return Buffer.concat([bytes.subarray(0, HEADER_SIZE), second, first, bytes.subarray(HEADER_SIZE + 2 * stored)]);
  }
});

describe("range reads of one object", () => {
  test("an opened reader serves many ranges with the size and header read once, each range reading only its chunks", async () => {
    const inner = new DirectoryStore(path.join(await tempHome("codec-reader"), "store"));
    const requests: string[] = [];
    // The real store, with each request it serves written down.
    const store: ObjectStore = {
      location: inner.location,
      put: (key, body, options) => inner.put(key, body, options),
      get: (key, options) => {
        requests.push(`get ${options?.range ? `${options.range.start}-${options.range.end}` : "whole"}`);
        return inner.get(key, options);
      },
      head: (key) => {
        requests.push("head");
        return inner.head(key);
      },
      list: (prefix) => inner.list(prefix),
      delete: (keys) => inner.delete(keys),
      close: () => inner.close(),
    };
    const content = randomBytes(10 * CHUNK);
    await putObject(store, "o/bundle", content, { encrypted: false }, { chunkSize: CHUNK });
    const reader = await openObjectReader(store, "o/bundle", UNENCRYPTED);
    expect(reader.contentSize).toBe(content.length);
    expect(await reader.read({ start: 3 * CHUNK + 5, end: 3 * CHUNK + 9 })).toEqual(content.subarray(3 * CHUNK + 5, 3 * CHUNK + 9));
    expect(await reader.read({ start: 9 * CHUNK, end: 10 * CHUNK })).toEqual(content.subarray(9 * CHUNK));
    const stored = CHUNK + 16;
    expect(requests).toEqual([
      "head",
      `get 0-${HEADER_SIZE}`,
      `get ${HEADER_SIZE + 3 * stored}-${HEADER_SIZE + 4 * stored}`,
      `get ${HEADER_SIZE + 9 * stored}-${HEADER_SIZE + 10 * stored}`,
    ]);
    await expect(reader.read({ start: 10 * CHUNK - 1, end: 10 * CHUNK + 1 })).rejects.toMatchObject({ code: ErrorCode.Internal });
  });
});

describe("encrypted objects and keys", () => {
  test("an object whose data key the repository does not hold is refused, naming it", async () => {
    const store = new DirectoryStore(path.join(await tempHome("codec-keys"), "store"));
    const other: DataKey = newDataKey();
    await putObject(store, "o/other", Buffer.from("x"), { encrypted: true, dataKey: other });
    await expect(readObject(store, "o/other", encrypted)).rejects.toMatchObject({
      code: ErrorCode.RepositoryCorrupt,
      message: expect.stringContaining("data key this repository does not hold") as unknown,
    });
  });

  test("the repository key comes from the pass and the salt; it wraps data keys bound to their ids; a wrong pass fails the check", async () => {
    const salt = newSalt();
    const key = await deriveRepositoryKey("correct horse", salt);
    expect(key).toHaveLength(32);
    expect(await deriveRepositoryKey("correct horse", salt)).toEqual(key);
    expect(await deriveRepositoryKey("correct horse", newSalt())).not.toEqual(key);
    const check = keyCheck(key);
    expect(keyCheckPasses(key, check)).toBe(true);
    expect(keyCheckPasses(await deriveRepositoryKey("wrong horse", salt), check)).toBe(false);
    const wrapped = wrapDataKey(key, dataKey);
    expect(wrapped.includes(dataKey.key)).toBe(false);
    expect(unwrapDataKey(key, dataKey.id, wrapped, "repo1").key).toEqual(dataKey.key);
    expect(() => unwrapDataKey(key, newDataKey().id, wrapped, "repo1")).toThrow(
      expect.objectContaining({ code: ErrorCode.RepositoryCorrupt }),
    );
    const wrong = cipherPassWrong("repo2 (s3://bucket/prefix/)", "RELEVO_REPO2_CIPHER_PASS");
    expect(wrong).toMatchObject({ code: ErrorCode.RepositoryAccessDenied, details: { env: "RELEVO_REPO2_CIPHER_PASS" } });
    expect(wrong.message).toContain("repo2");
  });
});

function flip(bytes: Buffer, at: number): Buffer {
  const copy = Buffer.from(bytes);
  copy[at] = copy[at]! ^ 0xff;
  return copy;
}

function setByte(bytes: Buffer, at: number, value: number): Buffer {
  const copy = Buffer.from(bytes);
  copy[at] = value;
  return copy;
}
