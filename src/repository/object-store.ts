import type { Readable } from "node:stream";
import { ErrorCode, RelevoError } from "../errors";

/**
 * The storage under a backup repository: named objects, each written whole
 * and read whole or by byte range. Two implementations pass one conformance
 * suite (test/integration/object-store-conformance.test.ts): a directory
 * (DirectoryStore) and S3-compatible object storage (S3Store).
 *
 * What it promises is what S3 promises, so that nothing above it leans on a
 * file system: an object appears under its key only once it is complete
 * (never a torn object; a directory writes a temporary file and renames
 * it), a later put of the same key replaces it whole, a list shows what a
 * completed put wrote (S3's read-after-write consistency), there is no
 * rename, and no lock (the repository's lock lives in Relevo's lease store).
 * Integrity and encryption are the layer above's (ObjectCodec): a store
 * moves bytes.
 */
export interface ObjectStore {
  /** Where it is, for messages and the API: a path or `s3://bucket/prefix` at an endpoint, never a credential. */
  readonly location: string;
  /**
   * Writes `body` under `key`, replacing an object of that key. A stream is
   * read with bounded memory (a multipart upload of parts on S3). Aborted by
   * `signal` or failed, nothing is left under the key, and no upload is left
   * open.
   */
  put(key: string, body: Readable | Buffer, options?: PutOptions): Promise<ObjectInfo>;
  /** The object's bytes, or those of `range`; NOT_FOUND when there is no such object. */
  get(key: string, options?: { readonly range?: ByteRange; readonly signal?: AbortSignal }): Promise<Readable>;
  /** The object's size and time, or null when there is none. */
  head(key: string): Promise<ObjectInfo | null>;
  /**
   * Every object whose key starts with `prefix`, in no promised order (S3
   * lists by key; not every S3-protocol server does): a caller that needs
   * an order sorts.
   */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /** Removes these objects; one that is absent already is no error. */
  delete(keys: readonly string[]): Promise<void>;
  /** Ends what the store holds open (connections, abandoned uploads' aborts). */
  close(): Promise<void>;
}

export interface PutOptions {
  readonly signal?: AbortSignal;
  /** Called as bytes are stored, with the total so far (the `backupProgress` of uploads). */
  readonly onProgress?: (bytesStored: number) => void;
}

export interface ObjectInfo {
  readonly key: string;
  readonly size: number;
  /** When the object was written (the store's clock; on S3 to the second). */
  readonly modifiedAt: Date;
  /**
   * Tells versions of the object apart: it changes whenever different
   * content is written under the key (even of the same size within the same
   * second), and may stay when the same bytes are written again (S3's ETag
   * of a simple upload is their MD5). What a cache of parsed objects keys on.
   */
  readonly etag: string;
}

/** Bytes `start` to `end`, `end` excluded. */
export interface ByteRange {
  readonly start: number;
  readonly end: number;
}

/** A segment of a key: a name (letters, digits, `.`, `_`, `-`), not starting with a dot (temporary files do). */
const SEGMENT = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$/;
const MAX_KEY_LENGTH = 900;

/**
 * A key is `/`-separated segments (see SEGMENT), at most 900 characters:
 * the same names in a directory and in a bucket, none that climbs out of
 * the store (`..`) or hides (a leading dot). Anything else is a defect of
 * the caller, refused before any I/O. Pure.
 */
export function assertObjectKey(key: string): void {
  if (key.length === 0 || key.length > MAX_KEY_LENGTH || !key.split("/").every((segment) => SEGMENT.test(segment))) {
    throw new RelevoError(ErrorCode.Internal, `${JSON.stringify(key.slice(0, 120))} is not an object key`);
  }
}

/** A prefix of keys: "" (everything), or segments as a key's, with or without a trailing `/`. Pure. */
export function assertKeyPrefix(prefix: string): void {
  if (prefix === "") return;
  assertObjectKey(prefix.endsWith("/") ? prefix.slice(0, -1) : prefix);
}

/** Whether `range` lies within an object of `size` bytes and holds at least one byte. Pure. */
export function rangeWithin(range: ByteRange, size: number): boolean {
  return (
    Number.isSafeInteger(range.start) && Number.isSafeInteger(range.end) && range.start >= 0 && range.start < range.end && range.end <= size
  );
}

export function objectNotFound(store: ObjectStore, key: string): RelevoError {
  return new RelevoError(ErrorCode.NotFound, `${store.location}: no object ${key}`, { details: { key } });
}

export function rangeOutside(store: ObjectStore, key: string, range: ByteRange, size: number): RelevoError {
  return new RelevoError(ErrorCode.Internal, `${store.location}: bytes ${range.start}-${range.end} are not within ${key} (${size} bytes)`, {
    details: { key },
  });
}
