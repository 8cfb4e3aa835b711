import { createHash } from "node:crypto";
import { mkdir, open, type FileHandle } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { gzip } from "node:zlib";
import { contentCrc32 } from "./copy-file";
import { lz4Compress } from "./lz4-stream";
import type { Compression, StoredContent } from "../backup/manifest";

const gzipAsync = promisify(gzip);

/** Files up to this size go into bundles, read and compressed as one buffer. */
export const BUNDLE_FILE_LIMIT = 1024 * 1024;
/** A bundle is closed and the next one started past this size. */
const BUNDLE_TARGET_BYTES = 64 * 1024 * 1024;

/** A small file's content, hashed, compressed and appended to a bundle. */
export interface BundledFile {
  readonly size: number;
  readonly crc32: string;
  readonly stored: StoredContent;
}

/**
 * Packs small files into a few large stored objects (bundles/<n>) instead of
 * one object each: a data directory holds about a thousand catalog files of
 * a few kilobytes, and creating, renaming and later opening a file apiece
 * cost more than reading them. Each file's compressed content is one
 * contiguous range of its bundle (offset, bytes), readable on its own.
 * Appends are serialised; hashing and compression happen before, in parallel.
 */
export class BundleWriter {
  private current: { handle: FileHandle; relative: string; size: number } | null = null;
  private sequence = 0;
  private appending: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly backupDir: string,
    readonly compression: Compression,
  ) {}

  async add(content: Buffer): Promise<BundledFile> {
    const crc32 = contentCrc32(content);
    const stored = await compressBuffer(content, this.compression);
    const storedSha256 = createHash("sha256").update(stored).digest("hex");
    const placed = this.appending.then(() => this.append(stored));
    this.appending = placed.catch(() => undefined);
    const { relative, offset } = await placed;
    return {
      size: content.length,
      crc32,
      stored: { path: relative, offset, bytes: stored.length, compression: this.compression, sha256: storedSha256 },
    };
  }

  /** Closes the open bundle. The caller syncs the file system before the manifest counts. */
  async close(): Promise<void> {
    await this.appending;
    const current = this.current;
    this.current = null;
    await current?.handle.close();
  }

  private async append(data: Buffer): Promise<{ relative: string; offset: number }> {
    if (this.current && this.current.size + data.length > BUNDLE_TARGET_BYTES && this.current.size > 0) {
      await this.current.handle.close();
      this.current = null;
    }
    if (!this.current) {
      this.sequence += 1;
      const relative = `bundles/${String(this.sequence).padStart(5, "0")}`;
      const file = path.join(this.backupDir, relative);
      await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
      // "wx": a bundle is written once, never appended to by another run.
      this.current = { handle: await open(file, "wx", 0o600), relative, size: 0 };
    }
    const offset = this.current.size;
    let written = 0;
    while (written < data.length) {
      const { bytesWritten } = await this.current.handle.write(data, written, data.length - written, offset + written);
      written += bytesWritten;
    }
    this.current.size += data.length;
    return { relative: this.current.relative, offset };
  }
}

async function compressBuffer(content: Buffer, compression: Compression): Promise<Buffer> {
  switch (compression) {
    case "lz4":
      return lz4Compress(content);
    case "gzip":
      return gzipAsync(content, { level: 1 });
    case "none":
      return content;
  }
}
