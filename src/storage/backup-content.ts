import { createReadStream } from "node:fs";
import { readFile, rm } from "node:fs/promises";
import path from "node:path";
import type { ObjectReader } from "../repository/object-codec";
import { Readable } from "node:stream";
import { buffer } from "node:stream/consumers";
import { ErrorCode, RelevoError } from "../errors";
import { contentFormOf, type BackupManifest, type StoredContent } from "../backup/manifest";
import { backupContentPrefix, bundleKey, dataKey } from "../repository/repository-layout";
import { contentRemoved, type Repository } from "./repository";

/** A content object's path as a manifest records it: `data/<n>` or `bundles/<n>` (repository-layout's sequence names). */
const CONTENT_OBJECT = /^(data|bundles)\/\d{8}$/;

/** Which backup a content belongs to, and in which form it was stored (see ContentForm). */
export type ContentOwner = Pick<BackupManifest, "id" | "formatVersion">;

/**
 * The key of a content object of backup `id`. A manifest's paths are
 * Relevo's own; one that is not a content object's (`../x`, another
 * backup's) is a damaged or forged manifest.
 */
export function contentObjectKey(repository: Repository, id: string, relative: string): string {
  if (!CONTENT_OBJECT.test(relative)) {
    throw new RelevoError(
      ErrorCode.PreconditionFailed,
      `backup ${id}'s manifest names ${relative}, which is not one of its content objects`,
    );
  }
  return `${backupContentPrefix(repository.generation, id)}${relative}`;
}

/**
 * The stored (still compressed) bytes of one content, streamed: its whole
 * object, or its range of a bundle (an object read by range: only the
 * chunks that hold it are fetched and checked). Content of a version 2 or
 * 3 backup is read from its file by path.
 */
export async function openStoredBytes(
  repository: Repository,
  owner: ContentOwner,
  stored: StoredContent,
  /** Bundles already opened for range reads, by key (see BundleReaders): a bundle's header is then read once for all its files. */
  readers?: BundleReaders,
): Promise<Readable> {
  if (stored.bytes === 0) return Readable.from([]);
  const start = stored.offset ?? 0;
  if (contentFormOf(owner) === "file") {
    return createReadStream(repository.storedPath(owner.id, stored.path), {
      start,
      end: start + stored.bytes - 1,
      highWaterMark: 1024 * 1024,
    });
  }
  const key = contentObjectKey(repository, owner.id, stored.path);
  if (stored.offset === undefined) return repository.objects.getStream(key);
  const reader = await (readers ? readers.open(repository, key) : repository.objects.openReader(key));
  return Readable.from([await reader.read({ start, end: start + stored.bytes })]);
}

/**
 * Bundles opened for range reads, kept for one pass over many bundled
 * files (a verification): opening one costs a HEAD and a read of its
 * header, on object storage two requests per file otherwise. A reader
 * holds nothing open (each read is a request of its own), so the cache
 * needs no closing; one that failed to open fails every file of its bundle,
 * as each would have.
 */
export class BundleReaders {
  private readonly opened = new Map<string, Promise<ObjectReader>>();

  open(repository: Repository, key: string): Promise<ObjectReader> {
    let reader = this.opened.get(key);
    if (!reader) {
      reader = repository.objects.openReader(key);
      // Settled either way before it is kept: a rejection is handled by each caller that awaits it.
      reader.catch(() => undefined);
      this.opened.set(key, reader);
    }
    return reader;
  }
}

/** A whole stored object (a bundle) in memory, checked. */
export async function readStoredObject(repository: Repository, owner: ContentOwner, relative: string): Promise<Buffer> {
  if (contentFormOf(owner) === "file") return readFile(repository.storedPath(owner.id, relative));
  return buffer(await repository.objects.getStream(contentObjectKey(repository, owner.id, relative)));
}

/**
 * Removes a backup's content (a failed or expired backup): its objects,
 * listed and deleted through the store; a version 2 or 3 backup's files by
 * path (only a directory repository ever held them).
 */
export async function removeBackupContent(repository: Repository, owner: ContentOwner): Promise<void> {
  if (contentFormOf(owner) === "file") {
    // storedPath's check: such files are only ever in generation 0 of an unencrypted directory repository.
    repository.storedPath(owner.id, "data");
    for (const part of ["data", "bundles"]) await rm(path.join(repository.backupDir(owner.id), part), { recursive: true, force: true });
    return;
  }
  const prefix = backupContentPrefix(repository.generation, owner.id);
  // Content only: the backup's prefix may also hold its legacy manifest.json, which stays.
  for (const part of ["data/", "bundles/"]) await repository.objects.deleteAll(`${prefix}${part}`);
}

/**
 * Removes what is left of a failed or expired backup, `record` its
 * manifest as it is to stay (status failed or expired), in an order a
 * crash anywhere cannot spoil: the record written first (under the
 * archive's key, see writeManifest: readable whatever follows), then the
 * content, then the data key (after the content, never before: the
 * content stays readable while it exists), then the record again without
 * the key's id, which marks the removal done. Every step can be run again,
 * so an interrupted removal is completed by running this again on the
 * record (expiry does, for every record still naming a key). Returns the
 * record as it stays.
 */
export async function removeBackupRemains(repository: Repository, record: BackupManifest): Promise<BackupManifest> {
  await repository.writeManifest(record);
  await removeBackupContent(repository, record);
  if (record.dataKeyId === undefined) return record;
  await repository.deleteDataKey(record);
  const done = withoutDataKey(record);
  await repository.writeManifest(done);
  return done;
}

/** The manifest without its data key's id (a removal done, or a copy about to get a key of its target's). Pure. */
export function withoutDataKey(record: BackupManifest): BackupManifest {
  const copy: { -readonly [K in keyof BackupManifest]: BackupManifest[K] } = { ...record };
  delete copy.dataKeyId;
  return copy;
}

/** The failed and expired backups whose removal was interrupted (see removeBackupRemains): their records still name a key. Pure. */
export function unfinishedRemovals(manifests: readonly BackupManifest[]): BackupManifest[] {
  return manifests.filter((manifest) => contentRemoved(manifest) && manifest.dataKeyId !== undefined);
}

/**
 * Where a backup being taken stores its content: each large file and each
 * bundle one object, under the next sequence number (never a data
 * directory's path: any file name fits, and keys are the same in a
 * directory and a bucket). Every put is durable once it resolves.
 */
export class BackupContentWriter {
  private dataObjects = 0;
  private bundleObjects = 0;
  private stored = 0;
  readonly backupId: string;

  constructor(
    private readonly repository: Repository,
    /** The backup being taken: its id, and in an encrypted repository the data key its objects are written under. */
    private readonly owner: Pick<BackupManifest, "id" | "dataKeyId">,
    /** Told as bytes reach the store (an upload's progress): the `bytesStored` of backupProgress. */
    private readonly onStored?: (bytesStored: number) => void,
  ) {
    this.backupId = owner.id;
  }

  /** Bytes put into the repository so far, in their stored form (compressed, encrypted), puts in flight included. */
  get bytesStored(): number {
    return this.stored;
  }

  /** The path (relative to the backup) of the next large file's object. */
  nextDataPath(): string {
    this.dataObjects += 1;
    return this.relative(dataKey(this.repository.generation, this.backupId, this.dataObjects));
  }

  nextBundlePath(): string {
    this.bundleObjects += 1;
    return this.relative(bundleKey(this.repository.generation, this.backupId, this.bundleObjects));
  }

  /** Streams `body` into the object at `relative`, with bounded memory; aborted by `signal`, nothing is left there. */
  async put(relative: string, body: Readable, options: { readonly signal?: AbortSignal } = {}): Promise<void> {
    const dataKey = await this.repository.dataKeyOf(this.owner);
    // The store reports each put's total so far: its growth is added to the backup's.
    let reported = 0;
    const onProgress = (total: number): void => {
      if (total <= reported) return;
      this.stored += total - reported;
      reported = total;
      this.onStored?.(this.stored);
    };
    const key = contentObjectKey(this.repository, this.backupId, relative);
    return this.repository.objects.putStream(key, body, { ...options, dataKey, onProgress });
  }

  /** An object stored just now that turned out not to be needed (a scan that kept no block). */
  async remove(relative: string): Promise<void> {
    await this.repository.objects.store.delete([contentObjectKey(this.repository, this.backupId, relative)]);
  }

  private relative(key: string): string {
    return key.slice(backupContentPrefix(this.repository.generation, this.backupId).length);
  }
}
