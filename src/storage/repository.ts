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
import type { ObjectInfo, ObjectStore } from "../repository/object-store";
import { archiveKey, generationPrefix, manifestKey, manifestsPrefix } from "../repository/repository-layout";
import {
  identityRecording,
  nextGeneration,
  readRepositoryDescriptor,
  writeRepositoryDescriptor,
  type IdentityRecording,
} from "../repository/repository-descriptor";
import { RepositoryStore, absentAsNull as objectOrNull } from "../repository/repository-store";
import { UNENCRYPTED, type DataKey } from "../repository/object-codec";
import type { RepositoryKeyring } from "../repository/repository-keyring";
import { legacyWalSummaryKey, walSummaryKey } from "../repository/repository-layout";
import { WalIndex } from "../wal/wal-index";
import type { WalSegmentSummary } from "../wal/waldump-summary";
import type { ArchivedWalState } from "../restore/recovery-window";
import { ArchivedWal } from "../wal/archived-wal";
import { archiveIdentity } from "../wal/archive-identity";

/**
 * The backup repository: objects in a directory (production: on another
 * disk or host) or in an S3 bucket under a prefix (`<root>` below). What
 * is read by path (`wal/`, legacy manifests and summaries, version 2 and 3
 * content) only a directory ever held:
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
 *   <root>/archive/…                 the WAL pushed from the spool (see WalPusher, and repository-layout)
 *   <root>/repository.json           which generation is read and written (see repository-descriptor)
 *   <root>/g<N>/manifests/, backups/, archive/, wal-summary/, diverged/
 *                                    the objects above of the cluster started over the Nth time
 *                                    (relevo up --new-cluster); the paths above are generation 0's,
 *                                    and so is everything read by path (legacy manifests, summaries)
 *   <root>/superseded/<label>/wal/   the receiving directory of the cluster before a start-over
 *   <root>/superseded/<label>/       an earlier Relevo's set-aside of a whole cluster (trees moved), kept as it is
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
  /**
   * A directory repository's `wal/` of older versions (the PostgreSQL
   * user's), read through handles while it is drained; null for object
   * storage, which never held one.
   */
  readonly legacyWal: WalArchive | null;
  /**
   * Verification, restore and expiry of a backup take its lock (see
   * BackupLocks), kept in Redis; null for a repository opened only to be
   * read or written (tests, tools), whose lockBackups is a defect.
   */
  readonly locks: BackupLocks | null;
  /**
   * The repository's objects (src/repository/repository-layout.ts says
   * where each lives): what moves off the host goes through here, never
   * by path: a DirectoryStore over `directory`, or an S3Store.
   */
  readonly objects: RepositoryStore;
  /**
   * Which cluster's objects are read and written here (repository-layout's
   * generation): `repository.json`'s, read when the repository is opened
   * (see open-repository), 0 when it has none. It changes only in
   * startNewGeneration, which `relevo up --new-cluster` calls while it
   * bootstraps, before the archive's workers are built.
   */
  get generation(): number {
    return this.current;
  }
  /** What the WAL archive in `objects` holds (see WalIndex): fed by the pusher, read wherever "archived" is asked. */
  get archive(): WalIndex {
    return this.generationState.archive;
  }
  /** The WAL received (`wal`) and archived (`objects`) together, as the archiver and failover decide over it (see ArchivedWal). */
  get archivedWal(): ArchivedWal {
    return this.generationState.archivedWal;
  }

  private current: number;
  private generationState: { readonly archive: WalIndex; readonly archivedWal: ArchivedWal };

  /** Manifest summaries by backup id, with the version of the manifest each was read from (listManifestSummaries). */
  private readonly summaries = new Map<string, { readonly version: string; readonly summary: ManifestSummary | null }>();

  /**
   * An encrypted repository's keys (see open-repository): every object is
   * read under its policy and written under a data key; null when the
   * repository is not encrypted.
   */
  private readonly keyring: RepositoryKeyring | null;

  /**
   * Where the repository is, for messages and the API: its directory, or
   * its bucket and prefix at an endpoint (never a credential).
   */
  readonly location: string;

  /**
   * A directory repository's directory: what only a directory ever held
   * (the legacy `wal/`, manifests and summaries read by path, version 2 and
   * 3 content) is read there; null for object storage, which holds objects
   * only.
   */
  readonly directory: string | null;

  /**
   * `place`: a directory (a directory repository, as tests and tools open
   * one), or the store the repository's objects are in (see
   * open-repository: a DirectoryStore or an S3Store).
   */
  constructor(
    place: string | ObjectStore,
    walOwner: OsIdentity | null,
    options: {
      /** The WAL spool's directory (`$RELEVO_HOME/wal-spool`: walSpoolDir), on this host. */
      readonly spoolDir: string;
      readonly locks?: BackupLocks;
      readonly keyring?: RepositoryKeyring;
      /** Which generation is read and written (repository.json's, see open-repository); 0 when absent. */
      readonly generation?: number;
    },
  ) {
    const store = typeof place === "string" ? new DirectoryStore(place) : place;
    this.location = store.location;
    this.directory = store instanceof DirectoryStore ? store.root : null;
    this.spool = new WalArchive(options.spoolDir, walOwner);
    this.spoolDir = this.spool.path;
    this.legacyWal = this.directory === null ? null : new WalArchive(path.join(this.directory, "wal"), walOwner);
    this.locks = options.locks ?? null;
    this.keyring = options.keyring ?? null;
    this.objects = new RepositoryStore(store, this.keyring?.policy ?? UNENCRYPTED);
    this.current = options.generation ?? 0;
    this.generationState = this.stateOf(this.current);
  }

  /** A directory repository's directory; INTERNAL for object storage (a caller that reads by path is a defect there). */
  get root(): string {
    if (this.directory === null) {
      throw new RelevoError(ErrorCode.Internal, `${this.location} is object storage: it has no directory to read by path`);
    }
    return this.directory;
  }

  /** Generation 0's legacy backup directories (`backups/<id>/`, read by path): a directory repository's only. */
  get backupsDir(): string {
    return path.join(this.root, "backups");
  }

  /** Generation 0's summaries' directory (tests plant legacy files there): summaries are read and written through `objects`. */
  get walSummaryDir(): string {
    return path.join(this.root, "wal-summary");
  }

  /** Ends what the store holds open: an S3 store's connections, and the multipart uploads it abandons. */
  async close(): Promise<void> {
    await this.objects.store.close();
  }

  private stateOf(generation: number): { readonly archive: WalIndex; readonly archivedWal: ArchivedWal } {
    const archive = new WalIndex({ objects: this.objects, generation });
    const archivedWal = new ArchivedWal({
      receiving: this.spool,
      objects: this.objects,
      generation,
      index: archive,
      archiveKey: () => this.archiveKey(),
    });
    return { archive, archivedWal };
  }

  /**
   * Whether what a directory repository held before objects is read by
   * path (legacy manifests `backups/<id>/manifest.json`, summaries
   * `wal-summary/<segment>.json`, version 2 and 3 content): in generation
   * 0 of an unencrypted directory repository only (object storage never
   * held them). An encrypted repository never
   * held such files, and a later generation's cluster never wrote them.
   */
  get readsLegacy(): boolean {
    return this.directory !== null && !this.encrypted && this.generation === 0;
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
      throw new RelevoError(ErrorCode.Internal, `${this.location}: backup ${owner.id} has no data key in an encrypted repository`);
    }
    return this.keyring.dataKey(Buffer.from(owner.dataKeyId, "hex"));
  }

  /**
   * Deletes a failed or expired backup's data key (`keys/data/<id>`), its
   * content removed first: nothing of the backup, nor an older copy of its
   * manifest put back, can be read again. Never the archive's key.
   */
  async deleteDataKey(owner: Pick<BackupManifest, "id" | "status" | "dataKeyId">): Promise<void> {
    if (!this.keyring || owner.dataKeyId === undefined) return;
    if (!contentRemoved(owner)) {
      throw new RelevoError(ErrorCode.Internal, `${this.root}: backup ${owner.id} is ${owner.status}: its data key is not deleted`);
    }
    await this.keyring.deleteDataKey(Buffer.from(owner.dataKeyId, "hex"));
  }

  /** Locks these backups across processes, waiting while another holds one (see BackupLocks). */
  async lockBackups(ids: readonly string[], options: LockOptions): Promise<HeldBackupLocks> {
    for (const id of ids) assertBackupId(id);
    if (!this.locks) throw new RelevoError(ErrorCode.Internal, `the repository ${this.location} was opened without its locks (Redis)`);
    return this.locks.acquire(ids, options);
  }

  /**
   * Makes the WAL spool (the PostgreSQL user's) and a directory
   * repository's directory (root's alone, 0700: no node and no PostgreSQL
   * process reads it). A bucket is the operator's to make (`relevo repo
   * check` says when it is missing).
   */
  async ensure(): Promise<void> {
    if (this.directory !== null) {
      await mkdir(this.directory, { recursive: true, mode: 0o700 });
      await chmod(this.directory, 0o700);
      await mkdir(this.backupsDir, { recursive: true, mode: 0o700 });
    }
    await this.spool.ensure();
  }

  /**
   * Starts the next generation (`relevo up --new-cluster`): a new cluster
   * started over in this data home must not mix its WAL and backups with
   * the old cluster's. `repository.json` gets generation N+1 and from then
   * on this repository reads and writes only under `g<N+1>/`; nothing of
   * the old generations is moved (on object storage a move is a full copy)
   * or read again. Read, then write: only one Relevo runs `relevo up` on a
   * data home at a time, and only it writes the descriptor.
   *
   * What pg_receivewal wrote on this host is the exception: not objects,
   * and the old cluster's segments there would be pushed into the new
   * generation's archive and steer where the archiver resumes. A legacy
   * `wal/` is moved to `superseded/<label>/wal` (a rename of an entry of
   * the root, root's own: nothing in it is followed), and the spool to
   * `wal-spool.superseded-<label>`, both before the descriptor is written,
   * neither pushed first (the archiver is not running yet; the old
   * generation is being abandoned). A crash before the descriptor leaves
   * the old generation current and its objects whole, and `--new-cluster`
   * can be run again; but the old cluster's received segments not pushed
   * yet are then in `wal-spool.superseded-<label>`, which nothing pushes:
   * an operator who rebuilds the old cluster instead (`relevo restore
   * --cluster`) moves them back into the spool first (docs/repositories.md,
   * "Generations"). Returns the new generation and where `wal/` went
   * (null: there was none).
   */
  async startNewGeneration(label: string): Promise<{ readonly generation: number; readonly walSetAside: string | null }> {
    const descriptor = nextGeneration(await readRepositoryDescriptor(this.objects));
    let walSetAside: string | null = null;
    if (this.directory !== null && this.legacyWal && (await stat(this.legacyWal.path).catch(absentAsNull))) {
      const aside = path.join(this.directory, "superseded", label);
      await mkdir(aside, { recursive: true, mode: 0o700 });
      walSetAside = path.join(aside, "wal");
      await rename(this.legacyWal.path, walSetAside);
    }
    // The spool holds the previous cluster's WAL not pushed yet: kept beside it (same file system; its parent is root's,
    // so the rename moves the spool itself, never anything its owner put in it), never pushed into the new archive.
    await rename(this.spoolDir, `${this.spoolDir}.superseded-${label}`).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== "ENOENT") throw error;
    });
    await this.ensure();
    await writeRepositoryDescriptor(this.objects, descriptor, { dataKey: await this.archiveKey() });
    this.current = descriptor.generation;
    this.generationState = this.stateOf(this.current);
    this.summaries.clear();
    return { generation: this.current, walSetAside };
  }

  /**
   * Records the system identifier of the cluster writing this generation
   * in `repository.json` (see repository-descriptor), once: the service
   * calls it whenever a primary is known, after the data home recorded it
   * (a descriptor naming a cluster the home does not would refuse the next
   * open), unless the generation holds another cluster's WAL or backups.
   * Read, then write, as startNewGeneration: only the `relevo up` of
   * the data home writes the descriptor. Returns what it came to: a
   * conflict is left for the caller to report, never written over.
   */
  async recordSystemIdentifier(systemIdentifier: string): Promise<IdentityRecording> {
    const decision = identityRecording(await readRepositoryDescriptor(this.objects), { generation: this.current, systemIdentifier });
    if (decision.phase !== "write") return decision;
    // Never a cluster over another's content (a repository of an earlier version pointed at from another home): the
    // archiver refuses that primary, and the descriptor would then refuse the content's own home.
    const archive = await archiveIdentity(this);
    if (archive && archive.systemIdentifier !== systemIdentifier) {
      return { phase: "conflict", reason: `the repository holds system identifier ${archive.systemIdentifier}'s ${archive.source}` };
    }
    await writeRepositoryDescriptor(this.objects, decision.descriptor, { dataKey: await this.archiveKey() });
    return decision;
  }

  /** Where this generation's objects are, for messages: the repository, and the generation's prefix when it has one. */
  get generationLocation(): string {
    const prefix = generationPrefix(this.generation);
    if (prefix === "") return this.location;
    return this.directory !== null ? path.join(this.directory, prefix) : `${this.location} (${prefix})`;
  }

  /** Every path of a backup goes through here: an id that is not one (BAD_USER_INPUT) never becomes a path. */
  backupDir(id: string): string {
    assertBackupId(id);
    return path.join(this.backupsDir, id);
  }

  /** A version 2 or 3 backup's stored file (see ContentForm); a later backup's content is objects (see backup-content). */
  storedPath(id: string, relative: string): string {
    // Such content is generation 0's: a later generation's manifest naming some is not one Relevo wrote.
    if (!this.readsLegacy) {
      throw new RelevoError(
        ErrorCode.RepositoryCorrupt,
        `backup ${id}'s manifest names stored files by path, which this repository never held`,
      );
    }
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
    // A backup whose content is removed (failed, expired) keeps its record under the archive's key: its own key goes
    // with its content (see removeBackupRemains), and one that failed before it had a key is recorded all the same.
    const dataKey = contentRemoved(manifest) ? await this.archiveKey() : await this.dataKeyOf(manifest);
    await this.objects.writeJson(manifestKey(this.generation, manifest.id), manifest, { dataKey });
    if (this.readsLegacy) await rm(this.legacyManifestFile(manifest.id), { force: true });
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
    // An encrypted repository never held a legacy file, nor did a later generation: one there was planted, and is not read.
    if (!this.readsLegacy) return null;
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
    const legacy = !this.readsLegacy ? [] : ((await readdir(this.backupsDir).catch(absentAsNull)) ?? []).filter(isBackupId);
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
    const info = !this.readsLegacy ? null : await stat(this.legacyManifestFile(id), { bigint: true }).catch(absentAsNull);
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
   * `options.spool` false leaves the receiving directory alone: it is
   * shared by every repository, and one repository's retention must not
   * take WAL another has not pushed yet (the spool is trimmed behind what
   * every repository holds).
   */
  async removeSegmentsBefore(segment: number, options: { readonly spool?: boolean } = {}): Promise<number> {
    const received =
      options.spool === false ? [] : (await this.spool.names()).filter((name) => (parseSegmentName(name)?.segment ?? segment) < segment);
    // From a listing, not the index as it stands: what another instance pushed since the index was built would else
    // be left behind for good (review 21, L5). One listing per expiry.
    await this.archive.rebuild();
    const archived = (await this.archive.names()).filter((name) => (parseSegmentName(name)?.segment ?? segment) < segment);
    const names = [...new Set([...received, ...archived])].sort();
    for (const name of names) {
      // The object first: a segment the index still names is one a restore may be promised.
      await this.objects.store.delete([archiveKey(this.generation, name)]);
      this.archive.removed(name);
      if (received.includes(name)) await this.spool.remove(name);
      // Its summary: the object, and the plain JSON one from before objects (generation 0's only).
      await this.objects.store.delete([
        walSummaryKey(this.generation, name),
        ...(this.readsLegacy ? [legacyWalSummaryKey(this.generation, name)] : []),
      ]);
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

/** Whether a backup's content is (being) removed: a failed or expired one. Pure. */
export function contentRemoved(manifest: Pick<BackupManifest, "status">): boolean {
  return manifest.status === "failed" || manifest.status === "expired";
}

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
