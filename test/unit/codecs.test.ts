import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { decompressor, storeStream } from "../../src/backup/copy-file";
import type { Compression } from "../../src/backup/manifest";

describe("stored content codecs", () => {
  // 3.5 MiB: several lz4 chunks, half compressible, half random.
  const content = Buffer.concat([Buffer.alloc(2 * 1024 * 1024, "relevo "), randomBytes(1536 * 1024)]);

  test.each<Compression>(["lz4", "gzip", "none"])("%s: stored, then read back byte for byte, with checksums of both", async (compression) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "relevo-codec-"));
    const target = path.join(dir, "file");
    const stored = await storeStream(Readable.from([content.subarray(0, 100), content.subarray(100)]), target, compression);
    expect(stored.size).toBe(content.length);
    if (compression !== "none") expect(stored.storedBytes).toBeLessThan(content.length);
    const chunks: Buffer[] = [];
    const sink = new Writable({ write: (chunk: Buffer, _e, callback) => (chunks.push(chunk), callback()) });
    const codec = decompressor(compression);
    if (codec) await pipeline(createReadStream(target), codec, sink);
    else await pipeline(createReadStream(target), sink);
    expect(Buffer.concat(chunks).equals(content)).toBe(true);
  });
});
