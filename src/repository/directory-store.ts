import { constants, createReadStream, type BigIntStats } from "node:fs";
import { open, readdir, rm, rmdir, stat } from "node:fs/promises";
import path from "node:path";
import { addAbortSignal, type Readable } from "node:stream";
import { ErrorCode, RelevoError } from "../errors";
import { makeDirectoriesDurably, publishDurably, temporaryNameFor, temporaryWriter } from "../util/durable-file";
import {
  assertKeyPrefix,
  assertObjectKey,
  objectNotFound,
  rangeOutside,
  rangeWithin,
  type ByteRange,
  type ObjectInfo,
  type ObjectStore,
  type PutOptions,
} from "./object-store";

/**
 * An object store in a directory of Relevo's host (root's, 0700): a key's
 * segments are directories and its file. A put writes a temporary file
 * beside the final one, flushes it and renames it into place, then
 * flushes the directory: an object is whole or absent after a crash, as on
 * S3. Temporary files a crash left are never listed (their names cannot be
 * keys) and are removed by a later put into the same directory's sweep.
 */
export class DirectoryStore implements ObjectStore {
  readonly location: string;

  constructor(readonly root: string) {
    this.root = path.resolve(root);
    this.location = this.root;
  }

  async put(key: string, body: Readable | Buffer, options: PutOptions = {}): Promise<ObjectInfo> {
    try {
      return await this.putFile(key, body, options);
    } catch (error) {
      throw this.failure(key, error);
    }
  }

  private async putFile(key: string, body: Readable | Buffer, options: PutOptions): Promise<ObjectInfo> {
    const file = this.fileOf(key);
    await makeDirectoriesDurably(path.dirname(file), { mode: 0o700 });
    const temp = temporaryNameFor(file);
    const handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    let stored = 0;
    try {
      // Aborted already: refused before the body is wrapped, since wrapping destroys it at once with an error that
      // nothing would listen to (the loop below never runs), which Node raises as an uncaught exception.
      options.signal?.throwIfAborted();
      // An abort destroys the source, which ends the loop with the abort's error.
      const source = Buffer.isBuffer(body) ? [body] : options.signal ? addAbortSignal(options.signal, body) : body;
      for await (const chunk of source) {
        const bytes = chunk as Buffer;
        await handle.write(bytes);
        stored += bytes.length;
        options.onProgress?.(stored);
      }
    } catch (error) {
      await handle.close().catch(() => undefined);
      await rm(temp, { force: true });
      throw error;
    }
    await publishDurably(handle, temp, file);
    return objectInfo(key, await stat(file, { bigint: true }));
  }

  async get(key: string, options: { readonly range?: ByteRange; readonly signal?: AbortSignal } = {}): Promise<Readable> {
    const file = this.fileOf(key);
    // Opened first, then checked through the handle: a put replacing the file in between is read whole, old or new.
    const handle = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW).catch((error: unknown) => {
      throw this.failure(key, error);
    });
    try {
      const info = await handle.stat();
      if (!info.isFile()) throw objectNotFound(this, key);
      const range = options.range;
      if (range && !rangeWithin(range, info.size)) throw rangeOutside(this, key, range, info.size);
      return createReadStream("", {
        fd: handle,
        start: range?.start,
        end: range ? range.end - 1 : undefined,
        signal: options.signal,
      });
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  async head(key: string): Promise<ObjectInfo | null> {
    const info = await stat(this.fileOf(key), { bigint: true }).catch((error: unknown) => {
      const failure = this.failure(key, error);
      if (failure.code === ErrorCode.NotFound) return null;
      throw failure;
    });
    return info?.isFile() ? objectInfo(key, info) : null;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    assertKeyPrefix(prefix);
    // The deepest directory the prefix names whole; below it every entry whose key starts with the prefix.
    const slash = prefix.lastIndexOf("/");
    const base = slash < 0 ? "" : prefix.slice(0, slash);
    yield* this.walk(base, prefix);
  }

  async delete(keys: readonly string[]): Promise<void> {
    for (const key of keys) {
      const file = this.fileOf(key);
      await rm(file, { force: true }).catch((error: unknown) => {
        throw this.failure(key, error);
      });
      // Directories the key's segments made, now empty, go too (as on S3, where a prefix is only its objects).
      for (
        let directory = path.dirname(file);
        directory !== this.root && directory.startsWith(this.root);
        directory = path.dirname(directory)
      ) {
        if (
          !(await rmdir(directory).then(
            () => true,
            () => false,
          ))
        )
          break; // not empty (or gone): its parents are not either
      }
    }
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  /** Entries below `directoryKey` ("" the root) whose keys start with `prefix`, in key order. */
  private async *walk(directoryKey: string, prefix: string): AsyncIterable<ObjectInfo> {
    const directory = directoryKey === "" ? this.root : path.join(this.root, ...directoryKey.split("/"));
    const entries = await readdir(directory, { withFileTypes: true }).catch((error: unknown) => {
      const failure = this.failure(directoryKey, error);
      if (failure.code === ErrorCode.NotFound) return [];
      throw failure;
    });
    // Key order: "a/b" sorts as the string "a/b", so a directory's entries sort by name with "/" after it.
    const named = entries
      .filter((entry) => !entry.name.startsWith(".") && temporaryWriter(entry.name) === null)
      .map((entry) => ({ entry, key: directoryKey === "" ? entry.name : `${directoryKey}/${entry.name}` }))
      .sort((a, b) => (sortKey(a) < sortKey(b) ? -1 : 1));
    // The directory's files stat'ed all at once, yielded in key order: one by one, a listing of a few hundred manifests
    // costs as many round trips (the API lists them per request).
    const stats = new Map(
      named
        .filter(({ entry, key }) => entry.isFile() && key.startsWith(prefix))
        .map(({ entry, key }) => [key, stat(path.join(directory, entry.name), { bigint: true }).catch(() => null)] as const), // null: removed meanwhile
    );
    for (const { entry, key } of named) {
      if (entry.isDirectory()) {
        if (`${key}/`.startsWith(prefix) || prefix.startsWith(`${key}/`)) yield* this.walk(key, prefix);
      } else {
        const info = await stats.get(key);
        if (info) yield objectInfo(key, info);
      }
    }
  }

  /** A file system's failure as a store's: absent NOT_FOUND, refused ACCESS_DENIED, anything else UNAVAILABLE. */
  private failure(key: string, error: unknown): RelevoError {
    if (error instanceof RelevoError) return error;
    const code = (error as NodeJS.ErrnoException).code;
    // Not the file system's (an abort, the source stream's own failure): passed on as it is.
    if (typeof code !== "string" || !code.startsWith("E")) throw error;
    if (code === "ENOENT" || code === "ENOTDIR") return objectNotFound(this, key);
    const reason = `${this.location}: ${key || "."}: ${(error as Error).message}`;
    if (code === "EACCES" || code === "EPERM" || code === "EROFS") {
      return new RelevoError(ErrorCode.RepositoryAccessDenied, reason, { cause: error, details: { repository: this.location } });
    }
    return new RelevoError(ErrorCode.RepositoryUnavailable, reason, { cause: error, details: { repository: this.location } });
  }

  private fileOf(key: string): string {
    assertObjectKey(key);
    return path.join(this.root, ...key.split("/"));
  }
}

/** Where an entry sorts among keys: a directory's keys all start with its name and "/". */
function sortKey(named: { readonly entry: { isDirectory(): boolean }; readonly key: string }): string {
  return named.entry.isDirectory() ? `${named.key}/` : named.key;
}

/** A file's ObjectInfo: its etag from the inode and times, which a put (a new file renamed into place) always changes. */
function objectInfo(key: string, info: BigIntStats): ObjectInfo {
  return {
    key,
    size: Number(info.size),
    modifiedAt: new Date(Number(info.mtimeMs)),
    etag: `${info.ino}-${info.size}-${info.mtimeNs}-${info.ctimeNs}`,
  };
}
