import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { Readable } from "node:stream";
import { createHash } from "node:crypto";
import { BundleWriter } from "../../src/storage/bundle-writer";
import { contentCrc32, decodeBuffer, decodedChunks, openStoredContent, storeChunks } from "../../src/storage/copy-file";
import type { Compression } from "../../src/backup/manifest";
import { tempHome } from "../helpers/home";

async function readRange(file: string, offset: number, bytes: number): Promise<Buffer> {
  const { open } = await import("node:fs/promises");
  const handle = await open(file, "r");
  try {
    const buffer = Buffer.alloc(bytes);
    await handle.read(buffer, 0, bytes, offset);
    return buffer;
  } finally {
    await handle.close();
  }
}

async function decompressed(source: Readable, compression: Compression): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of decodedChunks(source, compression)) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks);
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
      const dir = await tempHome("chunks");
      const target = path.join(dir, "file");
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
      const stored = await storeChunks(source, target, compression);
      expect(stored).toMatchObject({ size: content.length, crc32: contentCrc32(content) });
      expect(stored!.storedSha256).toBe(
        createHash("sha256")
          .update(await readFile(target))
          .digest("hex"),
      );
      expect((await decompressed(createReadStream(target), compression)).equals(content)).toBe(true);
      expect(await storeChunks(() => Promise.resolve(false), path.join(dir, "gone"), compression)).toBeNull();
      expect(await readdir(dir)).toEqual(["file"]);
    },
  );

  test.each<Compression>(["lz4", "gzip", "none"])(
    "%s: small files bundled together each read back from their own range",
    async (compression) => {
      const dir = await tempHome("bundle");
      const files = [
        Buffer.alloc(0),
        Buffer.from("pg_filenode.map"),
        content.subarray(0, 8192),
        randomBytes(700 * 1024),
        content.subarray(0, 1024 * 1024),
      ];
      const writer = new BundleWriter(dir, compression);
      // Added concurrently, as the backup's workers do.
      const bundled = await Promise.all(files.map((file) => writer.add(file)));
      await writer.close();
      expect(new Set(bundled.map((b) => b.stored.path)).size).toBe(1);
      for (const [index, file] of files.entries()) {
        const { stored, size, crc32 } = bundled[index]!;
        expect(size).toBe(file.length);
        expect(crc32).toBe(contentCrc32(file));
        const range = await readRange(path.join(dir, stored.path), stored.offset!, stored.bytes);
        expect(stored.sha256).toBe(createHash("sha256").update(range).digest("hex"));
        expect((await decodeBuffer(range, compression)).equals(file)).toBe(true);
        expect((await decompressed(openStoredContent(path.join(dir, stored.path), stored), compression)).equals(file)).toBe(true);
      }
      // The ranges tile the bundle without overlap.
      const ranges = bundled.map((b) => [b.stored.offset!, b.stored.bytes] as const).sort((a, b) => a[0] - b[0]);
      let end = 0;
      for (const [offset, bytes] of ranges) {
        expect(offset).toBe(end);
        end = offset + bytes;
      }
    },
  );
});
