import { createHash } from "node:crypto";
import { PassThrough } from "node:stream";
import { promisify } from "node:util";
import { gzip } from "node:zlib";
import { contentCrc32, writeWithBackpressure } from "./copy-file";
import type { BackupContentWriter } from "./backup-content";
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

/** Stored bytes buffered between the backup's workers and the bundle being written. */
const BUNDLE_BUFFER_BYTES = 4 * 1024 * 1024;

/**
 * Packs small files into a few large stored objects (bundles/<n>) instead of
 * one object each: a data directory holds about a thousand catalog files of
 * a few kilobytes, and storing, and later fetching, an object apiece cost
 * more than reading them. Each file's compressed content is one contiguous
 * range of its bundle's content (offset, bytes), readable on its own (a
 * range read of the object). A bundle is streamed into its object as files
 * are appended (one put, bounded memory) and complete once closed.
 * Appends are serialised; hashing and compression happen before, in parallel.
 */
export class BundleWriter {
  private current: { body: PassThrough; relative: string; size: number; stored: Promise<void> } | null = null;
  private appending: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly content: BackupContentWriter,
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

  /** Completes the open bundle: once this resolves, every bundle is stored (durably). */
  async close(): Promise<void> {
    await this.appending;
    await this.finish();
  }

  private async finish(): Promise<void> {
    const current = this.current;
    this.current = null;
    if (!current) return;
    current.body.end();
    await current.stored;
  }

  private async append(data: Buffer): Promise<{ relative: string; offset: number }> {
    if (this.current && this.current.size + data.length > BUNDLE_TARGET_BYTES && this.current.size > 0) await this.finish();
    if (!this.current) {
      const relative = this.content.nextBundlePath();
      const body = new PassThrough({ highWaterMark: BUNDLE_BUFFER_BYTES });
      const stored = this.content.put(relative, body);
      stored.catch(() => undefined); // awaited by finish(); a failure meanwhile fails the next append
      this.current = { body, relative, size: 0, stored };
    }
    const { body, relative, stored } = this.current;
    const offset = this.current.size;
    this.current.size += data.length;
    await writeWithBackpressure(body, data, stored);
    return { relative, offset };
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
