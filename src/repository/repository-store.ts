import type { Readable } from "node:stream";
import { ErrorCode, RelevoError, isRelevoError } from "../errors";
import {
  getObject,
  openObjectReader,
  putObject,
  readObject,
  UNENCRYPTED,
  type DataKey,
  type ObjectMode,
  type ObjectReader,
  type ReadPolicy,
} from "./object-codec";
import type { ObjectInfo, ObjectStore, PutOptions } from "./object-store";

/**
 * A repository's objects as its users see them: every object in Relevo's
 * stored form (checked chunks, or encrypted under a data key), JSON
 * documents, streams and ranges, listings by prefix. What is absent is
 * null; what cannot be read is an error (REPOSITORY_UNAVAILABLE,
 * _ACCESS_DENIED, _CORRUPT), never taken for absent: the archive's
 * identity, retention and recovery windows are decided on what is listed.
 */
export class RepositoryStore {
  constructor(
    readonly store: ObjectStore,
    /** Whether the repository is encrypted (and its data keys): what every object read must be, whatever its header says. */
    private readonly policy: ReadPolicy = UNENCRYPTED,
  ) {}

  get location(): string {
    return this.store.location;
  }

  /** `value` as JSON under `key` (a manifest, a summary): replaced whole, in one put. */
  async writeJson(key: string, value: unknown, options: { readonly dataKey?: DataKey } = {}): Promise<void> {
    await putObject(this.store, key, Buffer.from(`${JSON.stringify(value, null, 1)}\n`), this.modeOf(key, options.dataKey));
  }

  /** The JSON document under `key`, or null when there is none. */
  async readJson<T>(key: string): Promise<T | null> {
    const bytes = await absentAsNull(readObject(this.store, key, this.policy));
    if (bytes === null) return null;
    try {
      return JSON.parse(bytes.toString("utf8")) as T;
    } catch (cause) {
      // Its chunks passed their checks: what Relevo wrote there was not JSON (a defect), or another program's object.
      throw new RelevoError(ErrorCode.RepositoryCorrupt, `${this.location}: ${key} is not a JSON document`, { cause, details: { key } });
    }
  }

  async putStream(key: string, content: Readable, options: PutOptions & { readonly dataKey?: DataKey } = {}): Promise<void> {
    await putObject(this.store, key, content, this.modeOf(key, options.dataKey), {
      signal: options.signal,
      onProgress: options.onProgress,
    });
  }

  /** The content under `key`, each chunk checked before it is passed on; NOT_FOUND when absent. */
  getStream(key: string): Promise<Readable> {
    return getObject(this.store, key, this.policy);
  }

  /** The object opened for range reads (its size and header read once); NOT_FOUND when absent. */
  openReader(key: string): Promise<ObjectReader> {
    return openObjectReader(this.store, key, this.policy);
  }

  async exists(key: string): Promise<boolean> {
    return (await this.store.head(key)) !== null;
  }

  /** Every object under `prefix`, sorted by key. */
  async list(prefix: string): Promise<ObjectInfo[]> {
    const found: ObjectInfo[] = [];
    for await (const info of this.store.list(prefix)) found.push(info);
    return found.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  /** An object is written as the repository is: encrypted (under `dataKey`) in an encrypted one, never otherwise. */
  private modeOf(key: string, dataKey: DataKey | undefined): ObjectMode {
    if (this.policy.encrypted !== (dataKey !== undefined)) {
      throw new RelevoError(
        ErrorCode.Internal,
        `${this.location}: ${key} would be written ${dataKey ? "encrypted into a repository that is not" : "unencrypted into an encrypted repository"}`,
      );
    }
    return dataKey ? { encrypted: true, dataKey } : { encrypted: false };
  }

  /** Every object under `prefix` deleted (a backup's content); returns how many. */
  async deleteAll(prefix: string): Promise<number> {
    const keys = (await this.list(prefix)).map((info) => info.key);
    await this.store.delete(keys);
    return keys.length;
  }
}

/**
 * The data key a writer puts its objects under, asked for at each write
 * (made or found once, then kept in memory); undefined in an unencrypted
 * repository. The WAL archive's writers take the repository's archive key
 * so.
 */
export type DataKeySource = () => Promise<DataKey | undefined>;

/** `read`'s value, or null when its object is absent (NOT_FOUND); every other failure thrown. */
export async function absentAsNull<T>(read: Promise<T>): Promise<T | null> {
  try {
    return await read;
  } catch (error) {
    if (isRelevoError(error) && error.code === ErrorCode.NotFound) return null;
    throw error;
  }
}
