import { createCipheriv, createDecipheriv, createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { Transform, pipeline, type Readable, type TransformCallback } from "node:stream";
import { ErrorCode, RelevoError } from "../errors";
import { buffer } from "node:stream/consumers";
import { rangeOutside, rangeWithin, type ByteRange, type ObjectStore } from "./object-store";

/**
 * How Relevo stores an object's bytes: a header, then the content in
 * chunks of CHUNK_SIZE bytes (the last one shorter, maybe empty), each
 * followed by what proves it. Unencrypted, a SHA-256 over the object's key,
 * the chunk's index, whether it is the last, and the chunk; encrypted, the
 * chunk in AES-256-GCM under the data key the header names, with a random
 * nonce before it and the key, index and last-chunk flag as associated
 * data. Either way a chunk is checked before any byte of it is released; a
 * chunk moved to another place or object, a dropped chunk and a truncated
 * object all fail the check (REPOSITORY_CORRUPT); and since every chunk but
 * the last has one stored size, a byte range is read by fetching only the
 * chunks that hold it.
 *
 *   header (32 bytes): "RLVO" | version 1 | mode (0 checksum, 1 aes-256-gcm) | 2 reserved
 *                      | chunk size (u32 BE) | data key id (16 bytes, zero when unencrypted) | 4 reserved
 *   chunk:             checksum: data | sha256(…)[0..16]
 *                      encrypted: nonce (12) | ciphertext | GCM tag (16)
 */
export const CHUNK_SIZE = 1024 * 1024;
export const HEADER_SIZE = 32;
const MAGIC = Buffer.from("RLVO");
const VERSION = 1;
const TAG_SIZE = 16;
const NONCE_SIZE = 12;

/** A data key: what encrypts the objects of one backup (or of the archive), wrapped in the repository by its key. */
export interface DataKey {
  /** 16 bytes: which key, written in each object's header. */
  readonly id: Buffer;
  /** 32 bytes, AES-256. */
  readonly key: Buffer;
}

export type ObjectMode = { readonly encrypted: false } | { readonly encrypted: true; readonly dataKey: DataKey };

/** Finds the data key an object's header names (null: not one of this repository's keys). */
export type DataKeyLookup = (id: Buffer) => Promise<DataKey | null>;

/**
 * How a reader expects the repository's objects to be: the repository says
 * so, never the object. An object whose header names another mode is
 * refused (REPOSITORY_CORRUPT), so that whoever can write to the store
 * cannot replace an encrypted object with a merely checksummed one of
 * their making, whose check needs no key.
 */
export type ReadPolicy = { readonly encrypted: false } | { readonly encrypted: true; readonly lookup: DataKeyLookup };

export const UNENCRYPTED: ReadPolicy = { encrypted: false };

interface Header {
  readonly encrypted: boolean;
  readonly chunkSize: number;
  readonly keyId: Buffer;
  /** The header's bytes: every chunk's proof covers them (mode, chunk size and key id cannot change unnoticed). */
  readonly raw: Buffer;
}

/** Per-chunk overhead on top of its data. */
function overhead(encrypted: boolean): number {
  return encrypted ? NONCE_SIZE + TAG_SIZE : TAG_SIZE;
}

function encodeHeader(mode: ObjectMode, chunkSize: number): Buffer {
  const header = Buffer.alloc(HEADER_SIZE);
  MAGIC.copy(header, 0);
  header.writeUInt8(VERSION, 4);
  header.writeUInt8(mode.encrypted ? 1 : 0, 5);
  header.writeUInt32BE(chunkSize, 8);
  if (mode.encrypted) mode.dataKey.id.copy(header, 12);
  return header;
}

function decodeHeader(bytes: Buffer, key: string): Header {
  if (bytes.length < HEADER_SIZE || !bytes.subarray(0, 4).equals(MAGIC) || bytes.readUInt8(4) !== VERSION) {
    throw corrupt(key, "it does not start with Relevo's object header");
  }
  const mode = bytes.readUInt8(5);
  const chunkSize = bytes.readUInt32BE(8);
  if (mode > 1 || chunkSize === 0 || chunkSize > 64 * CHUNK_SIZE) throw corrupt(key, "its header is not one Relevo writes");
  return { encrypted: mode === 1, chunkSize, keyId: Buffer.from(bytes.subarray(12, 28)), raw: Buffer.from(bytes.subarray(0, HEADER_SIZE)) };
}

/** What a chunk's proof covers besides its data: the object's header and key, the chunk's place, whether it ends the object. */
function associatedData(header: Buffer, key: string, index: number, last: boolean): Buffer {
  const place = Buffer.alloc(9);
  place.writeBigUInt64BE(BigInt(index), 0);
  place.writeUInt8(last ? 1 : 0, 8);
  return Buffer.concat([header, Buffer.from(key, "utf8"), Buffer.from([0]), place]);
}

function checksum(header: Buffer, key: string, index: number, last: boolean, data: Buffer): Buffer {
  return createHash("sha256")
    .update(associatedData(header, key, index, last))
    .update(data)
    .digest()
    .subarray(0, TAG_SIZE);
}

function sealChunk(mode: ObjectMode, header: Buffer, key: string, index: number, last: boolean, data: Buffer): Buffer {
  if (!mode.encrypted) return Buffer.concat([data, checksum(header, key, index, last, data)]);
  const nonce = randomBytes(NONCE_SIZE);
  const cipher = createCipheriv("aes-256-gcm", mode.dataKey.key, nonce);
  cipher.setAAD(associatedData(header, key, index, last));
  const sealed = Buffer.concat([cipher.update(data), cipher.final()]);
  return Buffer.concat([nonce, sealed, cipher.getAuthTag()]);
}

function openChunk(header: Header, dataKey: DataKey | null, key: string, index: number, last: boolean, stored: Buffer): Buffer {
  if (stored.length < overhead(header.encrypted)) throw corrupt(key, `chunk ${index} is cut short`);
  if (!header.encrypted) {
    const data = stored.subarray(0, stored.length - TAG_SIZE);
    if (!timingSafeEqual(checksum(header.raw, key, index, last, data), stored.subarray(stored.length - TAG_SIZE))) {
      throw corrupt(key, `chunk ${index} fails its checksum`);
    }
    return data;
  }
  const decipher = createDecipheriv("aes-256-gcm", dataKey!.key, stored.subarray(0, NONCE_SIZE));
  decipher.setAAD(associatedData(header.raw, key, index, last));
  decipher.setAuthTag(stored.subarray(stored.length - TAG_SIZE));
  try {
    return Buffer.concat([decipher.update(stored.subarray(NONCE_SIZE, stored.length - TAG_SIZE)), decipher.final()]);
  } catch {
    throw corrupt(key, `chunk ${index} fails its authentication tag`);
  }
}

/**
 * The stored form of a stream: header, then each chunk sealed. A full
 * chunk is held until the next byte shows whether it is the last.
 */
export function encodeObject(key: string, mode: ObjectMode, options: { readonly chunkSize?: number } = {}): Transform {
  const chunkSize = options.chunkSize ?? CHUNK_SIZE;
  const pending = new ByteQueue();
  let index = 0;
  const header = encodeHeader(mode, chunkSize);
  let started = false;
  const start = (stream: Transform): void => {
    if (!started) stream.push(header);
    started = true;
  };
  return new Transform({
    transform(data: Buffer, _encoding, done: TransformCallback) {
      start(this);
      pending.push(data);
      while (pending.length > chunkSize) {
        this.push(sealChunk(mode, header, key, index, false, pending.take(chunkSize)));
        index += 1;
      }
      done();
    },
    flush(done: TransformCallback) {
      start(this);
      this.push(sealChunk(mode, header, key, index, true, pending.take(pending.length)));
      done();
    },
  });
}

/**
 * The content of a stored stream, each chunk checked before it is passed
 * on. `firstIndex`: the stream starts at that chunk (a range read); the
 * object's header is given then, as `header`, and the stream's last chunk
 * is the object's last only if `endsObject`.
 */
function decodeChunks(options: {
  readonly key: string;
  readonly policy: ReadPolicy;
  readonly header?: Header;
  readonly firstIndex?: number;
  readonly endsObject?: boolean;
}): Transform {
  let header = options.header ?? null;
  let dataKey: DataKey | null = null;
  const pending = new ByteQueue();
  let index = options.firstIndex ?? 0;
  const key = options.key;
  const ready = async (): Promise<void> => {
    if (header === null) return;
    const policy = options.policy;
    if (header.encrypted !== policy.encrypted) {
      throw corrupt(
        key,
        header.encrypted ? "it is encrypted, in a repository that is not" : "it is not encrypted, in an encrypted repository",
      );
    }
    if (policy.encrypted && dataKey === null) {
      dataKey = await policy.lookup(header.keyId);
      if (dataKey === null) throw keyMissing(key);
    }
  };
  return new Transform({
    transform(data: Buffer, _encoding, done: TransformCallback) {
      pending.push(data);
      void (async () => {
        if (header === null) {
          if (pending.length < HEADER_SIZE) return;
          header = decodeHeader(pending.take(HEADER_SIZE), key);
        }
        await ready();
        const stored = header.chunkSize + overhead(header.encrypted);
        while (pending.length > stored) {
          this.push(openChunk(header, dataKey, key, index, false, pending.take(stored)));
          index += 1;
        }
      })().then(() => done(), done);
    },
    flush(done: TransformCallback) {
      void (async () => {
        if (header === null) throw corrupt(key, "it is shorter than its header");
        await ready();
        if (pending.length > 0 || options.endsObject !== false) {
          this.push(openChunk(header, dataKey, key, index, options.endsObject !== false, pending.take(pending.length)));
        }
      })().then(() => done(), done);
    },
  });
}

/**
 * Writes `content` under `key` in Relevo's stored form (see above). A put
 * that fails destroys `content`: nothing is left reading it.
 */
export async function putObject(
  store: ObjectStore,
  key: string,
  content: Readable | Buffer,
  mode: ObjectMode,
  options: { readonly signal?: AbortSignal; readonly onProgress?: (bytesStored: number) => void; readonly chunkSize?: number } = {},
): Promise<void> {
  const encoder = encodeObject(key, mode, { chunkSize: options.chunkSize });
  if (Buffer.isBuffer(content)) encoder.end(content);
  else pipeline(content, encoder, () => undefined); // an error of either destroys both; put sees the encoder's
  try {
    await store.put(key, encoder, { signal: options.signal, onProgress: options.onProgress });
  } catch (error) {
    encoder.destroy();
    if (!Buffer.isBuffer(content)) content.destroy();
    throw error;
  }
}

/**
 * The whole content under `key`, each chunk checked as it arrives; the
 * object's stream is destroyed with the content's (an error, or a reader
 * that stops early), so no file or connection stays open.
 */
export async function getObject(store: ObjectStore, key: string, policy: ReadPolicy): Promise<Readable> {
  const stored = await store.get(key);
  return pipeline(stored, decodeChunks({ key, policy }), () => undefined);
}

/** The whole content under `key` in memory (a manifest, a summary). */
export async function readObject(store: ObjectStore, key: string, policy: ReadPolicy): Promise<Buffer> {
  return buffer(await getObject(store, key, policy));
}

/**
 * Bytes `range` of the content under `key`: the header and the object's
 * size first, then only the chunks that hold the range, each checked. For
 * many ranges of one object (the small files of a bundle), open it once
 * with openObjectReader.
 */
export async function getObjectRange(store: ObjectStore, key: string, range: ByteRange, policy: ReadPolicy): Promise<Buffer> {
  return (await openObjectReader(store, key, policy)).read(range);
}

/** One stored object opened for range reads: its size and header read once. */
export interface ObjectReader {
  /** The content's size (the stored object's less its header and the chunks' proofs). */
  readonly contentSize: number;
  read(range: ByteRange): Promise<Buffer>;
}

export async function openObjectReader(store: ObjectStore, key: string, policy: ReadPolicy): Promise<ObjectReader> {
  const info = await store.head(key);
  if (!info) throw new RelevoError(ErrorCode.NotFound, `${store.location}: no object ${key}`, { details: { key } });
  if (info.size < HEADER_SIZE) throw corrupt(key, "it is shorter than its header");
  const header = decodeHeader(await buffer(await store.get(key, { range: { start: 0, end: HEADER_SIZE } })), key);
  const stored = header.chunkSize + overhead(header.encrypted);
  const body = info.size - HEADER_SIZE;
  const chunks = Math.max(1, Math.ceil(body / stored));
  const contentSize = body - chunks * overhead(header.encrypted);
  if (contentSize < 0) throw corrupt(key, "it is shorter than its chunks' proofs");
  return {
    contentSize,
    read: async (range) => {
      if (!rangeWithin(range, contentSize)) throw rangeOutside(store, key, range, contentSize);
      const first = Math.floor(range.start / header.chunkSize);
      const last = Math.floor((range.end - 1) / header.chunkSize);
      const storedStart = HEADER_SIZE + first * stored;
      const storedEnd = Math.min(HEADER_SIZE + (last + 1) * stored, info.size);
      const decoder = decodeChunks({ key, policy, header, firstIndex: first, endsObject: last === chunks - 1 });
      const part = await store.get(key, { range: { start: storedStart, end: storedEnd } });
      const content = await buffer(pipeline(part, decoder, () => undefined));
      const offset = range.start - first * header.chunkSize;
      return content.subarray(offset, offset + (range.end - range.start));
    },
  };
}

/**
 * Bytes received in pieces, taken in chunks: each chunk is copied once
 * (joining the pieces it spans), not once per piece that arrives.
 */
class ByteQueue {
  private readonly pieces: Buffer[] = [];
  length = 0;

  push(piece: Buffer): void {
    if (piece.length === 0) return;
    this.pieces.push(piece);
    this.length += piece.length;
  }

  /** The first `size` bytes (at most what is held), removed. */
  take(size: number): Buffer {
    const wanted = Math.min(size, this.length);
    const parts: Buffer[] = [];
    let gathered = 0;
    while (gathered < wanted) {
      const piece = this.pieces[0]!;
      const needed = wanted - gathered;
      if (piece.length <= needed) {
        parts.push(piece);
        this.pieces.shift();
        gathered += piece.length;
      } else {
        parts.push(piece.subarray(0, needed));
        this.pieces[0] = piece.subarray(needed);
        gathered += needed;
      }
    }
    this.length -= wanted;
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, wanted);
  }
}

function corrupt(key: string, why: string): RelevoError {
  return new RelevoError(ErrorCode.RepositoryCorrupt, `stored object ${key} is damaged or not Relevo's: ${why}`, { details: { key } });
}

function keyMissing(key: string): RelevoError {
  return new RelevoError(
    ErrorCode.RepositoryCorrupt,
    `stored object ${key} is encrypted with a data key this repository does not hold (another repository's, or its key list is damaged)`,
    { details: { key } },
  );
}
