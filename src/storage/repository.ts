import { chmod, mkdir, readFile, readdir, rename, rm, stat } from "node:fs/promises";
import path from "node:path";
import type { OsIdentity } from "../nodes/os-user";
import { ErrorCode, RelevoError } from "../errors";
import {
  READABLE_MANIFEST_VERSIONS,
  assertBackupId,
  isBackupId,
  summarizeManifest,
  type BackupManifest,
  type ManifestSummary,
} from "../backup/manifest";
import { parseSegmentName } from "../postgres/wal-names";
import { WalArchive } from "./wal-archive";
import type { BackupLocks, HeldBackupLocks, LockOptions } from "./backup-locks";
import { chownNoFollow } from "../util/owned-files";
import { makeDirectoriesDurably, replaceFileDurably } from "../util/durable-file";
import { DirectoryStore } from "../repository/directory-store";
import { RepositoryStore } from "../repository/repository-store";
import { legacyWalSummaryKey, walSummaryKey } from "../repository/repository-layout";

/**
 * The backup repository, a directory (production: on another disk or host):
 *
 *   <root>/wal/                      the WAL archive: segments and .history files,
 *                                    named by PostgreSQL (timeline in the name),
 *                                    owned by the PostgreSQL OS user (pg_receivewal writes it,
 *                                    restore_command reads it): root works there only
 *                                    through handles (see WalArchive)
 *   <root>/wal/diverged/<time>/      WAL off the cluster's history, set aside (root's, 0700)
 *   <root>/wal-summary/<segment>      what each archived segment changed (blocks per relation): an object
 *                                    (see `objects`); `<segment>.json`, plain JSON, from before objects, still read
 *   <root>/backups/<id>/manifest.json
 *   <root>/backups/<id>/data/<path>.lz4  a large file's content, compressed
 *   <root>/backups/<id>/bundles/<n>      small files' compressed contents, one
 *                                        range each (manifest: offset, bytes)
 *   <root>/superseded/<label>/       a previous cluster's wal/, wal-summary/ and
 *                                    backups/, set aside when the data home
 *                                    started over (relevo up --new-cluster)
 *
 * Every write is temp + rename, so an interrupted backup leaves no torn file;
 * a backup without a completed manifest is not a backup.
 */
export class Repository {
  /** The WAL archive's path (pg_receivewal's -D, messages; no node reads it); root works in it through `wal` only. */
  readonly walDir: string;
  /** The WAL archive as root works in it: never through a link its owner, the PostgreSQL OS user, planted (see WalArchive). */
  readonly wal: WalArchive;
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

  /** Manifest summaries by backup id, with the identity of the file each was read from (listManifestSummaries). */
  private readonly summaries = new Map<string, { readonly identity: string; readonly summary: ManifestSummary | null }>();

  constructor(
    readonly root: string,
    private readonly walOwner: OsIdentity | null,
    options: { readonly locks?: BackupLocks } = {},
  ) {
    this.wal = new WalArchive(root, walOwner);
    this.walDir = this.wal.path;
    this.backupsDir = path.join(root, "backups");
    this.walSummaryDir = path.join(root, "wal-summary");
    this.locks = options.locks ?? null;
    this.objects = new RepositoryStore(new DirectoryStore(root));
  }

  /** Locks these backups across processes, waiting while another holds one (see BackupLocks). */
  async lockBackups(ids: readonly string[], options: LockOptions): Promise<HeldBackupLocks> {
    for (const id of ids) assertBackupId(id);
    if (!this.locks) throw new RelevoError(ErrorCode.Internal, `the repository ${this.root} was opened without its locks (Redis)`);
    return this.locks.acquire(ids, options);
  }

  async ensure(): Promise<void> {
    // 0711: the PostgreSQL user may reach wal/ but not list the rest.
    await mkdir(this.root, { recursive: true, mode: 0o711 });
    await chmod(this.root, 0o711);
    await mkdir(this.backupsDir, { recursive: true, mode: 0o700 });
    await mkdir(this.walDir, { recursive: true, mode: 0o700 });
    await chownNoFollow(this.walDir, this.walOwner);
  }

  /**
   * Moves the archive, its summaries and the backups to
   * `<root>/superseded/<label>/` (kept, never read again by Relevo) and
   * starts an empty repository: a new cluster started over in this data home
   * must not mix its WAL and backups with the old cluster's. Returns where
   * they went. By name, and safely so: every name used here (superseded/,
   * wal, wal-summary, backups) is an entry of the repository's root, root's
   * own, and rename moves `wal` itself, never anything its owner put in it.
   */
  async setAside(label: string): Promise<string> {
    const aside = path.join(this.root, "superseded", label);
    await mkdir(aside, { recursive: true, mode: 0o700 });
    for (const directory of [this.walDir, this.walSummaryDir, this.backupsDir]) {
      await rename(directory, path.join(aside, path.basename(directory))).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== "ENOENT") throw error;
      });
    }
    await this.ensure();
    return aside;
  }

  /** Every path of a backup goes through here: an id that is not one (BAD_USER_INPUT) never becomes a path. */
  backupDir(id: string): string {
    assertBackupId(id);
    return path.join(this.backupsDir, id);
  }

  storedPath(id: string, relative: string): string {
    const directory = this.backupDir(id);
    const stored = path.join(directory, relative);
    // A manifest's stored paths are Relevo's own; one that leaves its backup's directory is a damaged (or forged) manifest.
    if (!stored.startsWith(directory + path.sep)) {
      throw new RelevoError(ErrorCode.PreconditionFailed, `backup ${id}'s manifest names ${relative}, outside the backup's directory`);
    }
    return stored;
  }

  async writeManifest(manifest: BackupManifest): Promise<void> {
    const file = path.join(this.backupDir(manifest.id), "manifest.json");
    // Durable, the directory entries included (backups/<id>/ is new for a new backup): a backup whose manifest a crash
    // took back would be lost.
    await makeDirectoriesDurably(path.dirname(file), { mode: 0o700 });
    await replaceFileDurably(file, JSON.stringify(manifest, null, 1) + "\n", { mode: 0o600 });
  }

  /**
   * The backup's manifest; null when it has none, or one this version
   * cannot read (not a backup for it). A manifest that cannot be read for
   * another reason (EIO, EACCES) is an error, never taken for absent: the
   * archive's identity, the retention plan and `relevo up`'s refusal to
   * start an empty cluster over a repository all rest on what is listed.
   */
  async readManifest(id: string): Promise<BackupManifest | null> {
    const file = path.join(this.backupDir(id), "manifest.json");
    const text = await readFile(file, "utf8").catch(absentAsNull);
    if (text === null) return null;
    try {
      const manifest = JSON.parse(text) as BackupManifest;
      return READABLE_MANIFEST_VERSIONS.includes(manifest.formatVersion) ? manifest : null;
    } catch {
      return null;
    }
  }

  /** Every backup with a manifest, oldest first. */
  async listManifests(): Promise<BackupManifest[]> {
    const ids = ((await readdir(this.backupsDir).catch(absentAsNull)) ?? []).filter(isBackupId);
    const manifests = await Promise.all(ids.sort().map((id) => this.readManifest(id)));
    return manifests.filter((manifest): manifest is BackupManifest => manifest !== null);
  }

  /**
   * Every backup with a manifest, oldest first, without file lists (the
   * API's listing). A manifest is parsed once per version of its file: the
   * summary is kept with the file's identity (inode, size, change times),
   * which writeManifest's rename always changes, so a listing re-reads only
   * what changed and otherwise costs a stat per backup.
   */
  async listManifestSummaries(): Promise<ManifestSummary[]> {
    const ids = ((await readdir(this.backupsDir).catch(absentAsNull)) ?? []).filter(isBackupId).sort();
    const summaries = await Promise.all(ids.map((id) => this.manifestSummary(id)));
    const listed = new Set(ids);
    for (const id of this.summaries.keys()) if (!listed.has(id)) this.summaries.delete(id);
    return summaries.filter((summary): summary is ManifestSummary => summary !== null);
  }

  private async manifestSummary(id: string): Promise<ManifestSummary | null> {
    const info = await stat(path.join(this.backupDir(id), "manifest.json"), { bigint: true }).catch(absentAsNull);
    if (!info) return null;
    // Stat before reading: a manifest replaced in between is kept under the older identity, and read again next time.
    const identity = `${info.ino}:${info.size}:${info.mtimeNs}:${info.ctimeNs}`;
    const known = this.summaries.get(id);
    if (known?.identity === identity) return known.summary;
    const manifest = await this.readManifest(id);
    const summary = manifest ? summarizeManifest(manifest) : null;
    this.summaries.set(id, { identity, summary });
    return summary;
  }

  /** One stored object of a backup (see storedPath). */
  async removeStored(id: string, relative: string): Promise<void> {
    await rm(this.storedPath(id, relative), { force: true });
  }

  async removeBackupContent(id: string): Promise<void> {
    for (const part of ["data", "bundles"]) await rm(path.join(this.backupDir(id), part), { recursive: true, force: true });
  }

  /** Complete archived segments (regular files: a link is not one) with the time each was archived (its mtime). */
  async archivedSegmentList(): Promise<Array<{ timeline: number; segment: number; archivedAt: string; name: string }>> {
    // No archive is no segment (WalArchive says so); an archive that cannot be read is an error, not an empty one.
    const names = (await this.wal.names()).filter((name) => parseSegmentName(name) !== null);
    return (await this.wal.files(names)).map((file) => ({
      ...parseSegmentName(file.name)!,
      archivedAt: file.modifiedAt.toISOString(),
      name: file.name,
    }));
  }

  /** Removes archived segments numbered below `segment` (any timeline); never .history files. */
  async removeSegmentsBefore(segment: number): Promise<number> {
    let removed = 0;
    for (const entry of await this.archivedSegmentList()) {
      if (entry.segment < segment) {
        await this.wal.remove(entry.name);
        // Its summary: the object, and the plain JSON one from before objects.
        await this.objects.store.delete([walSummaryKey(this.generation, entry.name), legacyWalSummaryKey(this.generation, entry.name)]);
        removed += 1;
      }
    }
    return removed;
  }

  /** Complete archived segments (not .partial), as timeline → set of segment numbers. */
  async archivedSegments(): Promise<Map<number, Set<number>>> {
    const result = new Map<number, Set<number>>();
    for (const name of await this.wal.names()) {
      const parsed = parseSegmentName(name);
      if (!parsed) continue;
      if (!result.has(parsed.timeline)) result.set(parsed.timeline, new Set());
      result.get(parsed.timeline)!.add(parsed.segment);
    }
    return result;
  }
}

/** For a read's failure: null when the file (or a directory on its path) is not there; any other failure thrown as it is. */
function absentAsNull(error: NodeJS.ErrnoException): null {
  if (error.code === "ENOENT" || error.code === "ENOTDIR") return null;
  throw error;
}
