import { Client } from "pg";
import { clientConfig, type Credentials } from "../cluster/node-connection";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import type { FileEntry, NodeDriver, NodeRef } from "../nodes/node-driver";
import { BUNDLE_FILE_LIMIT, BundleWriter, type BundledFile } from "./bundle-writer";
import { forEachParallel, storeChunks, storedSuffix, syncFileSystem } from "./copy-file";
import { isExcluded, unloggedRelationsOf } from "./exclusions";
import { backupId, labelStartLsn, labelTimeline, MANIFEST_VERSION, type BackupManifest, type Compression, type ManifestEntry } from "./manifest";
import type { Repository } from "./repository";
import type { WalArchiver } from "./wal-archiver";

export interface CopyProgress {
  readonly phase: "copying" | "waiting-for-wal";
  readonly filesDone: number;
  readonly filesTotal: number;
  readonly bytesDone: number;
  readonly bytesTotal: number;
}

export interface FullBackupDeps {
  readonly clusterName: string;
  readonly driver: NodeDriver;
  readonly repository: Repository;
  readonly archiver: WalArchiver;
  readonly superuser: Credentials;
  readonly logger: Logger;
}

export interface FullBackupOptions {
  readonly source: NodeRef;
  readonly compression: Compression;
  readonly parallelism: number;
  readonly archiveTimeoutMs: number;
  /**
   * Closes the current WAL segment on the primary. A standby's pg_backup_stop
   * cannot switch segments, so for a backup taken from a replica the last
   * segment it needs would only be archived whenever the primary happens to
   * fill it: on an idle primary, never.
   */
  readonly switchWalOnPrimary: () => Promise<void>;
  readonly onStart?: (manifest: BackupManifest) => Promise<void> | void;
  readonly onProgress?: (progress: CopyProgress) => void;
}

/** Large files are read in 1 MiB chunks (one LZ4 frame each), four at a time per file. */
const LARGE_FILE_CHUNK = 1024 * 1024;
const LARGE_FILE_CHUNKS_IN_FLIGHT = 4;

interface CopyTarget {
  readonly driver: NodeDriver;
  readonly source: NodeRef;
  readonly bundles: BundleWriter;
  readonly repository: Repository;
  readonly backupId: string;
}

/**
 * One file into the repository: a small one read whole into a bundle, a
 * large one (or one that grew past the limit since it was listed) streamed
 * into an object of its own, data/<path>. null when the file is gone.
 */
async function copyOne(target: CopyTarget, file: FileEntry): Promise<BundledFile | null> {
  const { driver, source, bundles } = target;
  if (file.size <= BUNDLE_FILE_LIMIT) {
    const read = await driver.readSmallFile(source, file.path, BUNDLE_FILE_LIMIT);
    if (read.state === "absent") return null;
    if (read.state === "read") return bundles.add(read.content);
  }
  const relative = `data/${file.path}${storedSuffix(bundles.compression)}`;
  const copied = await storeChunks(
    (consume) => driver.readChunks(source, file.path, { chunkSize: LARGE_FILE_CHUNK, inFlight: LARGE_FILE_CHUNKS_IN_FLIGHT }, consume),
    target.repository.storedPath(target.backupId, relative),
    bundles.compression,
  );
  if (copied === null) return null;
  return {
    size: copied.size,
    crc32: copied.crc32,
    stored: { path: relative, bytes: copied.storedBytes, compression: bundles.compression, sha256: copied.storedSha256 },
  };
}

/**
 * A consistent physical copy with PostgreSQL's non-exclusive backup API:
 * pg_backup_start and pg_backup_stop on one dedicated connection held for
 * the whole copy (if that session ends, PostgreSQL aborts the backup, and so
 * do we); the files are copied while the cluster runs (torn pages are
 * repaired by WAL replay from the redo point, which is why full_page_writes
 * matters), the backup_label PostgreSQL returns is stored, and the backup
 * counts as complete only once the WAL from its start to its stop LSN is in
 * the archive. A failure leaves a manifest marked failed and no content.
 */
export async function takeFullBackup(deps: FullBackupDeps, options: FullBackupOptions): Promise<BackupManifest> {
  const { driver, repository, logger } = deps;
  const startedAt = new Date();
  const id = backupId("full", startedAt);
  const session = new Client({ ...clientConfig(options.source, deps.superuser, 60000), statement_timeout: 0, query_timeout: undefined });
  let sessionError: Error | null = null;
  session.on("error", (error) => (sessionError = error));
  let manifest: BackupManifest = {
    formatVersion: MANIFEST_VERSION,
    id,
    type: "full",
    status: "running",
    reference: null,
    cluster: deps.clusterName,
    systemIdentifier: "",
    pgVersion: "",
    source: options.source.name,
    timeline: 0,
    startLsn: "0/0",
    stopLsn: null,
    startedAt: startedAt.toISOString(),
    stoppedAt: null,
    finishedAt: null,
    backupLabel: null,
    tablespaceMap: null,
    compression: options.compression,
    sizeBytes: 0,
    storedBytes: 0,
    fileCount: 0,
    error: null,
    files: [],
  };
  try {
    await session.connect();
    const facts = (
      await session.query<{ system_identifier: string; version: string; in_recovery: boolean }>(
        "SELECT system_identifier::text, current_setting('server_version') AS version, pg_is_in_recovery() AS in_recovery FROM pg_control_system()",
      )
    ).rows[0]!;
    await session.query("SELECT pg_backup_start($1, true)", [`relevo ${id}`]);
    const checkpointedAtMs = Date.now();
    const backupStartSecond = Math.floor(Date.now() / 1000) * 1000;
    manifest = { ...manifest, systemIdentifier: facts.system_identifier, pgVersion: facts.version };
    await repository.writeManifest(manifest);
    await options.onStart?.(manifest);

    const listed = await driver.listFiles(options.source, ".");
    const unlogged = unloggedRelationsOf(listed);
    const kept = listed.filter((entry) => !isExcluded(entry, unlogged) && entry.type !== "symlink");
    const files = kept.filter((entry) => entry.type === "file");
    const bytesTotal = files.reduce((sum, entry) => sum + entry.size, 0);
    const entries = new Map<string, ManifestEntry>();
    for (const directory of kept.filter((entry) => entry.type === "directory")) {
      entries.set(directory.path, { path: directory.path, type: "directory", size: 0, mtimeMs: directory.mtimeMs });
    }
    let filesDone = 0;
    let bytesDone = 0;
    const bundles = new BundleWriter(repository.backupDir(id), options.compression);
    // Largest first: the big relation files set the pace, the small ones fill in around them.
    const byDescendingSize = [...files].sort((a, b) => b.size - a.size);
    try {
      await forEachParallel(byDescendingSize, options.parallelism, async (file: FileEntry) => {
        if (sessionError) throw sessionError;
        const copied = await copyOne({ driver, source: options.source, bundles, repository, backupId: id }, file);
        if (copied === null) return; // dropped while we copied: WAL replay removes it anyway
        entries.set(file.path, {
          path: file.path,
          type: "file",
          size: copied.size,
          mtimeMs: file.mtimeMs,
          ...(file.mtimeMs >= backupStartSecond ? { mtimeUnreliable: true } : {}),
          crc32: copied.crc32,
          stored: copied.stored,
        });
        filesDone += 1;
        bytesDone += copied.size;
        options.onProgress?.({ phase: "copying", filesDone, filesTotal: files.length, bytesDone, bytesTotal });
      });
    } finally {
      await bundles.close();
    }
    if (sessionError) throw sessionError;

    // On a primary, pg_backup_stop also switches to a new WAL segment, so the
    // last one the backup needs is complete and can be archived.
    const stop = (await session.query<{ lsn: string; labelfile: string; spcmapfile: string | null }>("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"))
      .rows[0]!;
    const stoppedAt = new Date();
    if (facts.in_recovery) await options.switchWalOnPrimary();
    const startLsn = labelStartLsn(stop.labelfile);
    const timeline = labelTimeline(stop.labelfile);
    if (!startLsn || timeline === null) throw new RelevoError(ErrorCode.Internal, `unexpected backup_label: ${stop.labelfile}`);
    await session.end().catch(() => undefined);
    const copiedAtMs = Date.now();
    logger.info(
      { id, startLsn, stopLsn: stop.lsn, checkpointMs: checkpointedAtMs - startedAt.getTime(), copyMs: copiedAtMs - checkpointedAtMs },
      "backup copied; waiting for its WAL to be archived",
    );
    options.onProgress?.({ phase: "waiting-for-wal", filesDone, filesTotal: files.length, bytesDone, bytesTotal: bytesDone });
    await deps.archiver.waitForArchived(timeline, startLsn, stop.lsn, options.archiveTimeoutMs);
    logger.info({ id, walWaitMs: Date.now() - copiedAtMs }, "backup's WAL archived");

    const syncStartedAtMs = Date.now();
    await syncFileSystem(repository.backupDir(id));
    logger.info({ id, syncMs: Date.now() - syncStartedAtMs }, "backup's content on disk");
    const sorted = [...entries.values()].sort((a, b) => a.path.localeCompare(b.path));
    manifest = {
      ...manifest,
      status: "completed",
      timeline,
      startLsn,
      stopLsn: stop.lsn,
      stoppedAt: stoppedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      backupLabel: stop.labelfile,
      tablespaceMap: stop.spcmapfile && stop.spcmapfile.length > 0 ? stop.spcmapfile : null,
      sizeBytes: sorted.reduce((sum, entry) => sum + entry.size, 0),
      storedBytes: sorted.reduce((sum, entry) => sum + (entry.stored?.bytes ?? 0), 0),
      fileCount: sorted.filter((entry) => entry.type === "file").length,
      files: sorted,
    };
    await repository.writeManifest(manifest);
    return manifest;
  } catch (error) {
    await session.end().catch(() => undefined);
    const reason = (sessionError as Error | null)?.message ?? (error as Error).message;
    manifest = { ...manifest, status: "failed", finishedAt: new Date().toISOString(), error: reason, files: [] };
    await repository.removeBackupContent(id).catch(() => undefined);
    await repository.writeManifest(manifest).catch(() => undefined);
    throw new RelevoError(ErrorCode.CommandFailed, `backup ${id} failed: ${reason}`, { cause: error, details: { backupId: id } });
  }
}
