import { chmod, mkdir, readFile, readdir, rename, rm, stat } from "node:fs/promises";
import path from "node:path";
import type { OsIdentity } from "../nodes/os-user";
import { ErrorCode, RelevoError } from "../errors";
import { buffer } from "node:stream/consumers";
import {
  READABLE_MANIFEST_VERSIONS,
  assertBackupId,
  isBackupId,
  summarizeManifest,
  type BackupManifest,
  type ManifestSummary,
} from "../backup/manifest";
import { SEGMENT_SIZE, historyFileName, parseSegmentName } from "../postgres/wal-names";
import { lsnToNumber } from "../postgres/lsn";
import { WalArchive } from "./wal-archive";
import type { BackupLocks, HeldBackupLocks, LockOptions } from "./backup-locks";
import { DirectoryStore } from "../repository/directory-store";
import type { ObjectInfo } from "../repository/object-store";
import { archiveKey, archivePrefix, manifestKey, manifestsPrefix } from "../repository/repository-layout";
import { RepositoryStore, absentAsNull as objectOrNull } from "../repository/repository-store";
import { UNENCRYPTED, type DataKey } from "../repository/object-codec";
import type { RepositoryKeyring } from "../repository/repository-keyring";
import { legacyWalSummaryKey, walSummaryKey } from "../repository/repository-layout";
import { WalIndex } from "../wal/wal-index";
import type { WalSegmentSummary } from "../wal/waldump-summary";
import type { ArchivedWalState } from "../restore/recovery-window";
import { ArchivedWal } from "../wal/archived-wal";

/**
 * The backup repository, a directory (production: on another disk or host):
 *
 *   <root>/archive/…                 the WAL archive: segments and .history files pushed from
 *                                    the spool (see WalPusher, and repository-layout)
 *   <root>/diverged/<time>/…         WAL off the cluster's history, set aside (objects)
 *   <root>/wal/                      the WAL archive of older versions, owned by the PostgreSQL
 *                                    OS user: drained into archive/ at the archiver's start,
 *                                    then removed (see legacy-wal-drain); root works there only
 *                                    through handles (see WalArchive)
 *   <root>/wal-summary/<segment>      what each archived segment changed (blocks per relation): an object
 *                                    (see `objects`); `<segment>.json`, plain JSON, from before objects, still read
 *   <root>/manifests/<id>                a backup's manifest, a stored object (see `objects`)
 *   <root>/backups/<id>/manifest.json    a backup's manifest as Relevo wrote it before manifests/:
 *                                        read while it has no twin above, replaced by one when rewritten
 *   <root>/backups/<id>/data/<n>         a large file's content, compressed, one object (codec form)
 *   <root>/backups/<id>/bundles/<n>      small files' compressed contents, one object,
 *                                        a range of its content each (manifest: offset, bytes)
 *   <root>/backups/<id>/data/<path>.lz4  version 2 and 3 backups: raw files by data directory path
 *   <root>/backups/<id>/bundles/<nnnnn>  and raw bundles, read by path (see ContentForm)
 *   <root>/superseded/<label>/       a previous cluster's wal/, archive/, wal-summary/, manifests/ and
 *                                    backups/, set aside when the data home
 *                                    started over (relevo up --new-cluster)
 *
 * Every write is temp + rename, so an interrupted backup leaves no torn file;
 * a backup without a completed manifest is not a backup.
 *
 * Not in the repository: the WAL spool (`$RELEVO_HOME/wal-spool/`, see
 * `spool`), where pg_receivewal writes as the PostgreSQL OS user; nothing
 * in the repository is that user's any more (but a legacy `wal/` not
 * drained yet), so its root is root's alone, 0700.
 */
export class Repository {
  /** The WAL spool's path (pg_receivewal's -D, messages; no node reads it); root works in it through `spool` only. */
  readonly spoolDir: string;
  /**
   * The WAL spool as root works in it: never through a link its owner, the
   * PostgreSQL OS user, planted (see WalArchive). A cache of what the
   * pusher has not put into `objects` yet, on this host: the archive is
   * `objects`.
   */
  readonly spool: WalArchive;
  /** The repository's `wal/` of older versions (the PostgreSQL user's), read through handles while it is drained. */
  readonly legacyWal: WalArchive;
  readonly backupsDir: string;
  /** The summaries' directory (see wal-summary), for the set-aside, which moves it by path: summaries are read and written through `objects`. */
  readonly walSummaryDir: string;
  /**
   * Verification, restore and expiry of a backup take its lock (see
   * BackupLocks), kept in Redis; null for a repository opened only to be
   * read or written (tests, tools), whose lockBackups is a defect.
   */
  readonly locks: BackupLocks | null;
  /**
   * The repository's objects (src/repository/repository-layout.ts says
   * where each lives): what moves off the host goes through here, never
   * by path. A directory store over `root` until object storage is wired.
   */
  readonly objects: RepositoryStore;
  /** Which cluster's objects are read and written here (repository-layout's generation); 0 until clusters start over by generation. */
  readonly generation = 0;
  /** What the WAL archive in `objects` holds (see WalIndex): fed by the pusher, read wherever "archived" is asked. */
  readonly archive: WalIndex;
  /** The WAL received (`wal`) and archived (`objects`) together, as the archiver and failover decide over it (see ArchivedWal). */
  readonly archivedWal: ArchivedWal;

  /** Manifest summaries by backup id, with the version of the manifest each was read from (listManifestSummaries). */
  private readonly summaries = new Map<string, { readonly version: string; readonly summary: ManifestSummary | null }>();

  /**
   * An encrypted repository's keys (see open-repository): every object is
   * read under its policy and written under a data key; null when the
   * repository is not encrypted.
   */
  private readonly keyring: RepositoryKeyring | null;

  constructor(
    readonly root: string,
    walOwner: OsIdentity | null,
    options: {
      /** The WAL spool's directory (`$RELEVO_HOME/wal-spool`: walSpoolDir), on this host. */
      readonly spoolDir: string;
      readonly locks?: BackupLocks;
      readonly keyring?: RepositoryKeyring;
    },
  ) {
    this.spool = new WalArchive(options.spoolDir, walOwner);
    this.spoolDir = this.spool.path;
    this.legacyWal = new WalArchive(path.join(root, "wal"), walOwner);
    this.backupsDir = path.join(root, "backups");
    this.walSummaryDir = path.join(root, "wal-summary");
    this.locks = options.locks ?? null;
    this.keyring = options.keyring ?? null;
    this.objects = new RepositoryStore(new DirectoryStore(root), this.keyring?.policy ?? UNENCRYPTED);
    this.archive = new WalIndex({ objects: this.objects, generation: this.generation });
    this.archivedWal = new ArchivedWal({
      receiving: this.spool,
      objects: this.objects,
      generation: this.generation,
      index: this.archive,
      archiveKey: () => this.archiveKey(),
    });
  }

  /** Whether the repository is encrypted: no object is read or written in another form, and no legacy file is read. */
  get encrypted(): boolean {
    return this.keyring !== null;
  }

  /** The data key the WAL archive, its summaries and diverged WAL are written under; undefined unencrypted. */
  async archiveKey(): Promise<DataKey | undefined> {
    return this.keyring ? this.keyring.archiveKey() : undefined;
  }

  /** `manifest` with a new data key of its own (stored wrapped first) when the repository is encrypted; as it is otherwise. */
  async withNewDataKey(manifest: BackupManifest): Promise<BackupManifest> {
    if (!this.keyring) return manifest;
    const dataKey = await this.keyring.newDataKey();
    return { ...manifest, dataKeyId: dataKey.id.toString("hex") };
  }

  /** The data key a backup's manifest and content are written under (its manifest names it); undefined unencrypted. */
  async dataKeyOf(owner: Pick<BackupManifest, "id" | "dataKeyId">): Promise<DataKey | undefined> {
    if (!this.keyring) return undefined;
    if (owner.dataKeyId === undefined || !/^[0-9a-f]{32}$/.test(owner.dataKeyId)) {
      throw new RelevoError(ErrorCode.Internal, `${this.root}: backup ${owner.id} has no data key in an encrypted repository`);
    }
    return this.keyring.dataKey(Buffer.from(owner.dataKeyId, "hex"));
  }

  /** Locks these backups across processes, waiting while another holds one (see BackupLocks). */
  async lockBackups(ids: readonly string[], options: LockOptions): Promise<HeldBackupLocks> {
    for (const id of ids) assertBackupId(id);
    if (!this.locks) throw new RelevoError(ErrorCode.Internal, `the repository ${this.root} was opened without its locks (Redis)`);
    return this.locks.acquire(ids, options);
  }

  /** Makes the repository (root's alone, 0700: no node and no PostgreSQL process reads it) and the WAL spool (the PostgreSQL user's). */
  async ensure(): Promise<void> {
    await mkdir(this.root, { recursive: true, mode: 0o700 });
    await chmod(this.root, 0o700);
    await mkdir(this.backupsDir, { recursive: true, mode: 0o700 });
    await this.spool.ensure();
  }

  /**
   * Moves the archive, its summaries and the backups to
   * `<root>/superseded/<label>/` (kept, never read again by Relevo) and
   * starts an empty repository: a new cluster started over in this data home
   * must not mix its WAL and backups with the old cluster's. Returns where
   * they went. By name, and safely so: every name used here (superseded/,
   * wal, wal-summary, manifests, backups) is an entry of the repository's
   * root, root's own, and rename moves `wal` itself, never anything its
   * owner put in it. (A directory's rename, until clusters start over by
   * generation instead.)
   */
  async setAside(label: string): Promise<string> {
    const aside = path.join(this.root, "superseded", label);
    await mkdir(aside, { recursive: true, mode: 0o700 });
    const manifestsDir = path.join(this.root, manifestsPrefix(this.generation).replace(/\/$/, ""));
    const archiveDir = path.join(this.root, archivePrefix(this.generation).replace(/\/$/, ""));
    for (const directory of [this.legacyWal.path, archiveDir, this.walSummaryDir, manifestsDir, this.backupsDir]) {
      await rename(directory, path.join(aside, path.basename(directory))).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== "ENOENT") throw error;
      });
    }
    // The spool holds the previous cluster's WAL not pushed yet: kept beside it (same file system; its parent is root's,
    // so the rename moves the spool itself, never anything its owner put in it), never pushed into the new archive.
    await rename(this.spoolDir, `${this.spoolDir}.superseded-${label}`).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== "ENOENT") throw error;
    });
    await this.ensure();
    await this.archive.rebuild();
    return aside;
  }

  /** Every path of a backup goes through here: an id that is not one (BAD_USER_INPUT) never becomes a path. */
  backupDir(id: string): string {
    assertBackupId(id);
    return path.join(this.backupsDir, id);
  }

  /** A version 2 or 3 backup's stored file (see ContentForm); a later backup's content is objects (see backup-content). */
  storedPath(id: string, relative: string): string {
    const directory = this.backupDir(id);
    const stored = path.join(directory, relative);
    // A manifest's stored paths are Relevo's own; one that leaves its backup's directory is a damaged (or forged) manifest.
    if (!stored.startsWith(directory + path.sep)) {
      throw new RelevoError(ErrorCode.PreconditionFailed, `backup ${id}'s manifest names ${relative}, outside the backup's directory`);
    }
    return stored;
  }

  /**
   * Publishes the backup's manifest (created, or replaced whole: status,
   * reference point, verification) as the object `manifests/<id>`. A
   * legacy manifest file of the backup (see readManifest) is removed once
   * its twin is written, so that a backup has one manifest; a crash in
   * between leaves both, and the object is the one read.
   */
  async writeManifest(manifest: BackupManifest): Promise<void> {
    await this.objects.writeJson(manifestKey(this.generation, manifest.id), manifest, { dataKey: await this.dataKeyOf(manifest) });
    await rm(this.legacyManifestFile(manifest.id), { force: true });
  }

  /**
   * The backup's manifest; null when it has none, or one this version
   * cannot read (not a backup for it). A manifest that cannot be read for
   * another reason (REPOSITORY_UNAVAILABLE, _CORRUPT; EIO, EACCES on a
   * legacy file) is an error, never taken for absent: the archive's
   * identity, the retention plan and `relevo up`'s refusal to start an
   * empty cluster over a repository all rest on what is listed.
   *
   * A repository written before manifests became objects holds them as
   * `backups/<id>/manifest.json`, plain JSON: one without a twin object is
   * read by path (a directory repository's only), so that every backup
   * taken before stays listed, restorable and expirable.
   */
  async readManifest(id: string): Promise<BackupManifest | null> {
    const key = manifestKey(this.generation, id);
    const stored = await this.objects.readJson<BackupManifest>(key);
    if (stored !== null) return readable(stored);
    // An encrypted repository never held a legacy file: one there was planted, and is not read.
    if (this.encrypted) return null;
    const text = await readFile(this.legacyManifestFile(id), "utf8").catch(absentAsNull);
    if (text !== null) return parseLegacyManifest(text);
    // Neither: unless writeManifest replaced the legacy file by its object in between (object first, then the file).
    return readable(await this.objects.readJson<BackupManifest>(key));
  }

  /** Every backup with a manifest, oldest first. */
  async listManifests(): Promise<BackupManifest[]> {
    const { ids } = await this.listManifestIds();
    const manifests = await Promise.all(ids.map((id) => this.readManifest(id)));
    return manifests.filter((manifest): manifest is BackupManifest => manifest !== null);
  }

  /**
   * Every backup with a manifest, oldest first, without file lists (the
   * API's listing). A manifest is parsed once per version: the summary is
   * kept with the version it was read from (the object's etag, which a
   * rewrite always changes, even to the same size within the same second;
   * a legacy file's inode, size and change times), so a listing re-reads
   * only what changed and otherwise costs one listing of manifests/.
   */
  async listManifestSummaries(): Promise<ManifestSummary[]> {
    const { ids, objects } = await this.listManifestIds();
    const summaries = await Promise.all(ids.map((id) => this.manifestSummary(id, objects.get(id) ?? null)));
    const listed = new Set(ids);
    for (const id of this.summaries.keys()) if (!listed.has(id)) this.summaries.delete(id);
    return summaries.filter((summary): summary is ManifestSummary => summary !== null);
  }

  /**
   * The ids that may have a manifest, sorted, with the manifest objects
   * listed. Legacy directories first, objects second: a legacy manifest
   * rewritten meanwhile (its object written, then its file removed) is in
   * one listing or the other.
   */
  private async listManifestIds(): Promise<{ ids: string[]; objects: Map<string, ObjectInfo> }> {
    const legacy = this.encrypted ? [] : ((await readdir(this.backupsDir).catch(absentAsNull)) ?? []).filter(isBackupId);
    const prefix = manifestsPrefix(this.generation);
    const objects = new Map<string, ObjectInfo>();
    for (const info of await this.objects.list(prefix)) {
      const id = info.key.slice(prefix.length);
      if (isBackupId(id)) objects.set(id, info);
    }
    return { ids: [...new Set([...legacy, ...objects.keys()])].sort(), objects };
  }

  private async manifestSummary(id: string, object: ObjectInfo | null): Promise<ManifestSummary | null> {
    // The version before reading: a manifest replaced in between is kept under the older version, and read again next time.
    const version = object ? `object:${object.etag}` : await this.unlistedManifestVersion(id);
    if (version === null) {
      this.summaries.delete(id);
      return null;
    }
    const known = this.summaries.get(id);
    if (known?.version === version) return known.summary;
    const manifest = await this.readManifest(id);
    const summary = manifest ? summarizeManifest(manifest) : null;
    this.summaries.set(id, { version, summary });
    return summary;
  }

  /** The version of a manifest the objects' listing did not show: its legacy file's, or its object's written since; null when none. */
  private async unlistedManifestVersion(id: string): Promise<string | null> {
    const info = this.encrypted ? null : await stat(this.legacyManifestFile(id), { bigint: true }).catch(absentAsNull);
    if (info) return `legacy:${info.ino}:${info.size}:${info.mtimeNs}:${info.ctimeNs}`;
    const object = await this.objects.store.head(manifestKey(this.generation, id));
    return object ? `object:${object.etag}` : null;
  }

  private legacyManifestFile(id: string): string {
    return path.join(this.backupDir(id), "manifest.json");
  }

  /** Segments the repository's archive holds (pushed: see WalIndex), oldest first. */
  async archivedSegmentList(): Promise<Array<{ timeline: number; segment: number; name: string }>> {
    return (await this.archive.names()).flatMap((name) => {
      const parsed = parseSegmentName(name);
      return parsed ? [{ ...parsed, name }] : [];
    });
  }

  /**
   * The archive's segments and the time its WAL reaches: the newest
   * COMMIT or ABORT among the summaries of its newest segments (the
   * newest ones may not be summarised yet; a segment without a
   * transaction's end says nothing). Never an object's or file's time.
   */
  async archivedWalState(): Promise<ArchivedWalState> {
    const segments = await this.archivedSegmentList();
    const newestFirst = [...segments].sort((a, b) => b.segment - a.segment || b.timeline - a.timeline);
    for (const segment of newestFirst.slice(0, REACHED_AT_SEGMENTS_READ)) {
      // Newest first: the first transaction end found is the latest the archived WAL holds.
      const summary = await this.objects.readJson<WalSegmentSummary>(walSummaryKey(this.generation, segment.name));
      if (!summary?.lastTransactionEndAt) continue;
      // Its record runs into the next segment, not pushed yet (the summary was made from the received one): not reached.
      const successorPushed = segments.some((other) => other.segment === segment.segment + 1 && other.timeline >= segment.timeline);
      const end = summary.lastTransactionRecordEnd;
      if (!successorPushed && end && lsnToNumber(end) > (segment.segment + 1) * SEGMENT_SIZE) continue;
      return { segments, reachedAt: summary.lastTransactionEndAt };
    }
    return { segments, reachedAt: null };
  }

  /**
   * Removes archived segments numbered below `segment` (any timeline), in
   * the archive's objects and the receiving directory, with their
   * summaries; never .history files. Returns how many segments went.
   */
  async removeSegmentsBefore(segment: number): Promise<number> {
    const received = (await this.spool.names()).filter((name) => (parseSegmentName(name)?.segment ?? segment) < segment);
    const archived = (await this.archive.names()).filter((name) => (parseSegmentName(name)?.segment ?? segment) < segment);
    const names = [...new Set([...received, ...archived])].sort();
    for (const name of names) {
      // The object first: a segment the index still names is one a restore may be promised.
      await this.objects.store.delete([archiveKey(this.generation, name)]);
      this.archive.removed(name);
      if (received.includes(name)) await this.spool.remove(name);
      // Its summary: the object, and the plain JSON one from before objects.
      await this.objects.store.delete([walSummaryKey(this.generation, name), legacyWalSummaryKey(this.generation, name)]);
    }
    return names.length;
  }

  /** Segments the repository's archive holds (pushed: see WalIndex), as timeline → set of segment numbers. */
  archivedSegments(): Promise<Map<number, Set<number>>> {
    return this.archive.segments();
  }

  /** Timeline `timeline`'s history as the repository's archive holds it; null when it holds none. */
  async archivedHistory(timeline: number): Promise<string | null> {
    const content = await objectOrNull(this.objects.getStream(archiveKey(this.generation, historyFileName(timeline))));
    return content && (await buffer(content)).toString("utf8");
  }
}

/**
 * The WAL spool of the data home `home`: on Relevo's host, beside the
 * node directories, never in the repository (which may be a bucket).
 */
export function walSpoolDir(home: string): string {
  return path.join(home, "wal-spool");
}

/** How many of the archive's newest segments' summaries are read for the time its WAL reaches (see archivedWalState). */
const REACHED_AT_SEGMENTS_READ = 16;

/** The manifest if this version reads its format; null otherwise (not a backup for it). */
function readable(manifest: BackupManifest | null): BackupManifest | null {
  return manifest !== null && READABLE_MANIFEST_VERSIONS.includes(manifest.formatVersion) ? manifest : null;
}

/** A legacy manifest file's text: one that is not JSON (not Relevo's) is no backup, as it always was. */
function parseLegacyManifest(text: string): BackupManifest | null {
  try {
    return readable(JSON.parse(text) as BackupManifest);
  } catch {
    return null;
  }
}

/** For a read's failure: null when the file (or a directory on its path) is not there; any other failure thrown as it is. */
function absentAsNull(error: NodeJS.ErrnoException): null {
  if (error.code === "ENOENT" || error.code === "ENOTDIR") return null;
  throw error;
}
