import { randomBytes } from "node:crypto";
import { writeFile, mkdir } from "node:fs/promises";
import path from "node:path";
import { Readable } from "node:stream";
import { buffer } from "node:stream/consumers";
import { createHash } from "node:crypto";
import { BundleWriter } from "../../src/storage/bundle-writer";
import { contentCrc32, decodeBuffer, storeChunks, storedContentChunks } from "../../src/storage/copy-file";
import { BackupContentWriter, BundleReaders, contentObjectKey, openStoredBytes, readStoredObject } from "../../src/storage/backup-content";
import { DirectoryStore } from "../../src/repository/directory-store";
import { Repository, walSpoolDir } from "../../src/storage/repository";
import { ErrorCode } from "../../src/errors";
import type { Compression, StoredContent } from "../../src/backup/manifest";
import type { StoredSummary } from "../../src/storage/lz4-worker-decode";
import { tempHome } from "../helpers/home";
import { flipContentByte } from "../helpers/backups";

const ID = "20261201T000000Z-F";
/** A backup of this code (version 4: content as objects) and one of the previous layout (version 3: raw files by path). */
const CURRENT = { id: ID, formatVersion: 4 } as const;
const LEGACY = { id: ID, formatVersion: 3 } as const;

/** Every chunk of a stored content, decoded (a large LZ4 file: by the worker, fed from this thread). */
async function contentOf(
  open: () => Promise<Readable>,
  stored: StoredContent,
): Promise<{ content: Buffer; summary: StoredSummary | null }> {
  let summary: StoredSummary | null = null;
  const chunks: Buffer[] = [];
  for await (const chunk of storedContentChunks(open, stored, (seen) => (summary = seen))) chunks.push(Buffer.from(chunk));
  return { content: Buffer.concat(chunks), summary };
}

describe("stored content codecs", () => {
  test("the content checksum is the standard CRC-32 (the check value of 123456789)", () => {
    expect(contentCrc32(Buffer.from("123456789"))).toBe("cbf43926");
  });

  // 3.5 MiB: several lz4 chunks, half compressible, half random.
  const content = Buffer.concat([Buffer.alloc(2 * 1024 * 1024, "relevo "), randomBytes(1536 * 1024)]);

  test.each<Compression>(["lz4", "gzip", "none"])(
    "%s: stored from reused chunk buffers, then read back byte for byte",
    async (compression) => {
      const root = await tempHome("chunks");
      const repository = new Repository(root, null, { spoolDir: walSpoolDir(root) });
      // A source that reuses two buffers, as the drivers do, and checks that each is handed back before it is overwritten.
      const buffers = [Buffer.alloc(1024 * 1024), Buffer.alloc(1024 * 1024)];
      const busy = new Set<number>();
      const source = async (consume: (chunk: Buffer) => Promise<void>): Promise<boolean> => {
        const pending: Array<Promise<void>> = [];
        for (let at = 0, index = 0; at < content.length; at += 1024 * 1024, index += 1) {
          const slot = index % 2;
          if (busy.has(slot)) await pending[index - 2];
          expect(busy.has(slot)).toBe(false);
          const length = content.copy(buffers[slot]!, 0, at, at + 1024 * 1024);
          busy.add(slot);
          pending.push(consume(buffers[slot]!.subarray(0, length)).then(() => void busy.delete(slot)));
        }
        await Promise.all(pending);
        return true;
      };
      const objects = new BackupContentWriter(repository, { id: ID });
      const relative = objects.nextDataPath();
      expect(relative).toBe("data/00000001"); // a sequence, never the data directory's path
      const stored = await storeChunks(source, (body, signal) => objects.put(relative, body, { signal }), compression);
      expect(stored).toMatchObject({ size: content.length, crc32: contentCrc32(content) });
      const storedBytes = await readStoredObject(repository, CURRENT, relative);
      expect(storedBytes.length).toBe(stored!.storedBytes);
      expect(stored!.storedSha256).toBe(createHash("sha256").update(storedBytes).digest("hex"));
      const entry: StoredContent = { path: relative, bytes: stored!.storedBytes, compression, sha256: stored!.storedSha256 };
      const read = await contentOf(() => openStoredBytes(repository, CURRENT, entry), entry);
      expect(read.content.equals(content)).toBe(true);
      expect(read.summary).toEqual({ storedBytes: stored!.storedBytes, storedSha256: stored!.storedSha256 });
      // A file gone meanwhile: no object left behind.
      const gone = objects.nextDataPath();
      expect(
        await storeChunks(
          () => Promise.resolve(false),
          (body, signal) => objects.put(gone, body, { signal }),
          compression,
        ),
      ).toBeNull();
      expect((await repository.objects.list("")).map((info) => info.key)).toEqual([contentObjectKey(repository, ID, relative)]);
      // A flipped byte is caught by the object's own check, before any of its chunk is passed on: REPOSITORY_CORRUPT.
      await flipContentByte(repository, ID, relative, Math.floor(stored!.storedBytes / 2));
      await expect(contentOf(() => openStoredBytes(repository, CURRENT, entry), entry)).rejects.toMatchObject({
        code: ErrorCode.RepositoryCorrupt,
      });
    },
  );

  test.each<Compression>(["lz4", "gzip", "none"])(
    "%s: small files bundled together each read back from their own range",
    async (compression) => {
      const root = await tempHome("bundle");
      const repository = new Repository(root, null, { spoolDir: walSpoolDir(root) });
      const files = [
        Buffer.alloc(0),
        Buffer.from("pg_filenode.map"),
        content.subarray(0, 8192),
        randomBytes(700 * 1024),
        content.subarray(0, 1024 * 1024),
      ];
      const writer = new BundleWriter(new BackupContentWriter(repository, { id: ID }), compression);
      // Added concurrently, as the backup's workers do.
      const bundled = await Promise.all(files.map((file) => writer.add(file)));
      await writer.close();
      expect(new Set(bundled.map((b) => b.stored.path))).toEqual(new Set(["bundles/00000001"]));
      const whole = await readStoredObject(repository, CURRENT, "bundles/00000001");
      for (const [index, file] of files.entries()) {
        const { stored, size, crc32 } = bundled[index]!;
        expect(size).toBe(file.length);
        expect(crc32).toBe(contentCrc32(file));
        // Offsets are offsets in the bundle's content: the whole object's, and a range read's, bytes agree.
        const offset = stored.offset ?? -1;
        expect(offset).toBeGreaterThanOrEqual(0);
        const range = whole.subarray(offset, offset + stored.bytes);
        expect(stored.sha256).toBe(createHash("sha256").update(range).digest("hex"));
        expect((await buffer(await openStoredBytes(repository, CURRENT, stored))).equals(range)).toBe(true);
        expect((await decodeBuffer(range, compression)).equals(file)).toBe(true);
        expect((await contentOf(() => openStoredBytes(repository, CURRENT, stored), stored)).content.equals(file)).toBe(true);
      }
      // The ranges tile the bundle without overlap.
      const ranges = bundled.map((b) => [b.stored.offset!, b.stored.bytes] as const).sort((a, b) => a[0] - b[0]);
      let end = 0;
      for (const [offset, bytes] of ranges) {
        expect(offset).toBe(end);
        end = offset + bytes;
      }
      // A verification's pass over them opens the bundle once (one head, one header read), not once per file.
      const heads: string[] = [];
      const store = new DirectoryStore(root);
      const counted = new Repository(
        Object.assign(Object.create(store) as DirectoryStore, { head: (key: string) => (heads.push(key), store.head(key)) }),
        null,
        { spoolDir: walSpoolDir(root) },
      );
      const nonEmpty = bundled.filter((b) => b.stored.bytes > 0);
      const readers = new BundleReaders();
      for (const { stored } of nonEmpty) await buffer(await openStoredBytes(counted, CURRENT, stored, readers));
      expect(heads).toHaveLength(1);
      for (const { stored } of nonEmpty) await buffer(await openStoredBytes(counted, CURRENT, stored));
      expect(heads).toHaveLength(1 + nonEmpty.length);
    },
  );

  test("a version 3 backup's content (raw files by path, as the previous layout wrote them) is still read by its path", async () => {
    const root = await tempHome("legacy");
    const repository = new Repository(root, null, { spoolDir: walSpoolDir(root) });
    const { lz4Compress } = await import("../../src/storage/lz4-stream");
    const stored = await lz4Compress(content);
    const bundle = Buffer.concat([Buffer.from("other file"), stored]);
    const large = "data/base/1/1259.lz4";
    await mkdir(path.dirname(repository.storedPath(ID, large)), { recursive: true });
    await writeFile(repository.storedPath(ID, large), stored);
    await mkdir(path.dirname(repository.storedPath(ID, "bundles/00001")), { recursive: true });
    await writeFile(repository.storedPath(ID, "bundles/00001"), bundle);
    const sha256 = createHash("sha256").update(stored).digest("hex");
    const alone: StoredContent = { path: large, bytes: stored.length, compression: "lz4", sha256 };
    const read = await contentOf(() => openStoredBytes(repository, LEGACY, alone), alone);
    expect(read.content.equals(content)).toBe(true);
    expect(read.summary).toEqual({ storedBytes: stored.length, storedSha256: sha256 });
    const ranged: StoredContent = { path: "bundles/00001", offset: 10, bytes: stored.length, compression: "lz4", sha256 };
    expect((await contentOf(() => openStoredBytes(repository, LEGACY, ranged), ranged)).content.equals(content)).toBe(true);
    expect((await readStoredObject(repository, LEGACY, "bundles/00001")).equals(bundle)).toBe(true);
    // A version 4 manifest naming such a path is refused before any read: its content is objects under sequence keys.
    let refused: unknown = null;
    try {
      contentObjectKey(repository, ID, large);
    } catch (error) {
      refused = error;
    }
    expect(refused).toMatchObject({ code: ErrorCode.PreconditionFailed });
  });
});
