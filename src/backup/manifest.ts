import { ErrorCode, RelevoError } from "../errors";
import type { ReferencePoint } from "./reference-point";

/**
 * The repository's per-backup manifest (manifests/<id>; backups/<id>/manifest.json before): the
 * source of truth a catalog can be rebuilt from. Designed for the block-level
 * differential and incremental backups that come next: every file records
 * its length (restore truncates or extends to it) and where its content is
 * stored; a later backup may store only some blocks and reference the rest.
 */
export const MANIFEST_VERSION = 4;
/**
 * Versions this code reads: 2 is 3 without block-level entries; 4 is 3
 * with its content as objects of the repository (see ContentForm).
 */
export const READABLE_MANIFEST_VERSIONS: readonly number[] = [2, 3, 4];

export type BackupType = "full" | "differential" | "incremental";
export type BackupStatus = "running" | "completed" | "failed" | "expired";
export type Compression = "lz4" | "gzip" | "none";

/**
 * How a backup's content is stored. "object" (manifest version 4): each
 * large file and each bundle is one object of the repository in Relevo's
 * stored form (checked chunks, see object-codec), under a sequence key
 * (`data/<n>`, `bundles/<n>` below the backup's content prefix), read
 * through the repository's store. "file" (versions 2 and 3): raw files
 * under `backups/<id>/` of a directory repository, named after the data
 * directory's paths (`data/<path>.lz4`, `bundles/<nnnnn>`), read there by
 * path so that backups taken before keep restoring. Pure.
 */
export type ContentForm = "object" | "file";

export function contentFormOf(manifest: Pick<BackupManifest, "formatVersion">): ContentForm {
  return manifest.formatVersion >= 4 ? "object" : "file";
}

export interface StoredContent {
  /**
   * Where the content is, relative to the backup: an object's key below the
   * backup's content prefix (`data/<n>`, `bundles/<n>`), or, in a version 2
   * or 3 manifest, a path under the backup's directory (see ContentForm).
   */
  readonly path: string;
  /**
   * Where the content starts in that object: small files share bundles
   * (see BundleWriter). Absent: the object holds this content alone.
   */
  readonly offset?: number;
  /** Length of the stored (compressed) content: in an object, of its content (the object's checks not counted). */
  readonly bytes: number;
  readonly compression: Compression;
  /**
   * SHA-256 of the stored (compressed) bytes: the repository's integrity.
   * Strong, and cheap because compressed content is a fraction of the data.
   */
  readonly sha256: string;
}

export interface ManifestEntry {
  /** Relative to the data directory, '/'-separated. */
  readonly path: string;
  readonly type: "file" | "directory";
  readonly size: number;
  readonly mtimeMs: number;
  /**
   * The file changed within the second the backup started in: its mtime
   * cannot tell a later change apart (1 s resolution on some file systems),
   * so a later backup must not trust mtime for it.
   */
  readonly mtimeUnreliable?: boolean;
  /**
   * CRC-32 of the file's content as copied (8 hex digits): checks the way
   * back through decompression end to end, as PostgreSQL's own backup
   * manifests do with CRC-32C. A SHA-256 of a gigabyte of content would cost
   * more CPU than the copy itself; the stored bytes have theirs.
   */
  readonly crc32?: string;
  readonly stored?: StoredContent;
  /**
   * A block-level entry of a differential or incremental backup: only these
   * 8 KiB blocks (ranges of block numbers, ascending) are stored, their
   * contents one after another in `stored` (absent when there are none: the
   * file did not change), with `crc32` over them; every other block below
   * `size` is the same path's in the reference backup, resolved down the
   * chain. Absent: `stored` is the whole file.
   */
  readonly blocks?: ReadonlyArray<readonly [number, number]>;
}

export interface BackupManifest {
  readonly formatVersion: 2 | 3 | typeof MANIFEST_VERSION;
  readonly id: string;
  readonly type: BackupType;
  readonly status: BackupStatus;
  /** The backup this one builds on (differential / incremental); null for a full. */
  readonly reference: string | null;
  /**
   * How a differential or incremental found the changed blocks: the WAL's
   * block references since the reference's start, or a scan of every
   * relation file's page LSNs (when that WAL was missing or unreadable).
   */
  readonly changesFrom?: "wal" | "page-scan" | null;
  /** Why a backup asked for as differential or incremental was taken as a full instead. */
  readonly promotedToFull?: string | null;
  /** Files stored whole, and blocks stored by block-level entries. */
  readonly filesStored?: number;
  readonly blocksStored?: number;
  readonly cluster: string;
  readonly systemIdentifier: string;
  readonly pgVersion: string;
  readonly source: string;
  readonly timeline: number;
  /** The checkpoint's redo LSN: WAL replay starts here. */
  readonly startLsn: string;
  readonly stopLsn: string | null;
  readonly startedAt: string;
  readonly stoppedAt: string | null;
  readonly finishedAt: string | null;
  readonly backupLabel: string | null;
  readonly tablespaceMap: string | null;
  readonly compression: Compression;
  readonly sizeBytes: number;
  readonly storedBytes: number;
  readonly fileCount: number;
  readonly error: string | null;
  /**
   * The point the restore test restores to, with every table's checksum at
   * that point (see reference-point): taken on a replica by the first
   * restore test that needs it (older manifests: right after the backup, on
   * the primary). Absent until then, or when none could be taken.
   */
  readonly referencePoint?: ReferencePoint | null;
  /** The latest verification, if any. */
  readonly verification?: Verification | null;
  /**
   * In an encrypted repository, the id (hex) of the data key this backup's
   * manifest and content objects are written under (the key itself is
   * wrapped in the repository's `keys/data/`); absent otherwise. A failed
   * or expired backup's record keeps it until its content and then its key
   * are removed (see removeBackupRemains): present there, removal is
   * pending.
   */
  readonly dataKeyId?: string;
  /**
   * The repositories (their numbers) the backup is to be copied to once
   * completed in the one it was taken into (RELEVO_BACKUP_REPO=all): a
   * copy that failed is retried while its target lacks it (see
   * copiesToRetry). Absent: a backup written to one repository alone.
   */
  readonly copyTo?: readonly number[];
  readonly files: readonly ManifestEntry[];
}

export interface Verification {
  readonly checkedAt: string;
  /** Every stored file re-read and matched against the manifest. */
  readonly contentOk: boolean;
  /** Files whose stored content does not match (missing, or another checksum); one of an older backup of the chain as "<id>:<path>". */
  readonly badFiles: readonly string[];
  /** null when no restore test was asked for. */
  readonly restoreTest: {
    readonly ok: boolean;
    readonly durationMs: number;
    /** What failed: the restore, PostgreSQL's start, pg_amcheck's findings, or tables that differ. */
    readonly error: string | null;
    /** Tables compared with the backup's reference point (0 when it has none). */
    readonly tablesCompared?: number;
    /** Why no reference point was compared (the restore test ran pg_amcheck only); absent or null when one was. */
    readonly referenceMissing?: string | null;
  } | null;
}

/**
 * A manifest without its file list: what a listing shows. The list is most
 * of a manifest (an entry per file of the data directory), and a catalog of
 * hundreds of backups need not hold it; the counts it gave are kept.
 */
export type ManifestSummary = Omit<BackupManifest, "files"> & { readonly filesStored: number; readonly blocksStored: number };

/** Files stored whole, and blocks stored by block-level entries (older manifests: counted from the file list). */
export function storedCounts(manifest: BackupManifest | ManifestSummary): { filesStored: number; blocksStored: number } {
  return {
    filesStored:
      manifest.filesStored ??
      ("files" in manifest ? manifest.files.filter((entry) => entry.type === "file" && entry.stored && !entry.blocks).length : 0),
    blocksStored: manifest.blocksStored ?? 0,
  };
}

export function summarizeManifest(manifest: BackupManifest): ManifestSummary {
  const { files: _files, ...rest } = manifest;
  return { ...rest, ...storedCounts(manifest) };
}

/** Sortable, unique enough, readable: 20261125T224500Z-F. */
export function backupId(type: BackupType, at: Date): string {
  const stamp = at
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d+Z$/, "Z");
  return `${stamp}-${type === "full" ? "F" : type === "differential" ? "D" : "I"}`;
}

/** What backupId makes, and nothing else: an id is also a directory name under backups/. */
const BACKUP_ID = /^\d{8}T\d{6}Z-[FDI]$/;

export function isBackupId(id: string): boolean {
  return BACKUP_ID.test(id);
}

/**
 * Refuses anything that is not a backup id (BAD_USER_INPUT) before it
 * becomes a path: "../../x" would otherwise name a directory outside the
 * repository.
 */
export function assertBackupId(id: string): void {
  if (!isBackupId(id)) {
    throw new RelevoError(
      ErrorCode.BadUserInput,
      `${JSON.stringify(id.slice(0, 100))} is not a backup id (ids look like 20261125T224500Z-F)`,
      {
        details: { field: "id" },
      },
    );
  }
}

/** START WAL LOCATION of a backup_label (the redo point). */
export function labelStartLsn(label: string): string | null {
  return /^START WAL LOCATION: ([0-9A-F]+\/[0-9A-F]+)/m.exec(label)?.[1] ?? null;
}

export function labelTimeline(label: string): number | null {
  const match = /^START TIMELINE: (\d+)/m.exec(label);
  return match ? Number(match[1]) : null;
}
