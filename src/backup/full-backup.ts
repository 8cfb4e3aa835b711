import { Client } from "pg";
import { clientConfig, type Credentials } from "../cluster/node-connection";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import type { FileEntry, NodeDriver, NodeRef } from "../nodes/node-driver";
import { forEachParallel, storedSuffix, storeStream, syncFileSystem } from "./copy-file";
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
    await forEachParallel(files, options.parallelism, async (file: FileEntry) => {
      if (sessionError) throw sessionError;
      const stream = await driver.openRead(options.source, file.path);
      if (stream === null) return; // dropped while we copied: WAL replay removes it anyway
      const storedRelative = `data/${file.path}${storedSuffix(options.compression)}`;
      const copied = await storeStream(stream, repository.storedPath(id, storedRelative), options.compression);
      entries.set(file.path, {
        path: file.path,
        type: "file",
        size: copied.size,
        mtimeMs: file.mtimeMs,
        ...(file.mtimeMs >= backupStartSecond ? { mtimeUnreliable: true } : {}),
        sha256: copied.sha256,
        stored: { path: storedRelative, bytes: copied.storedBytes, compression: options.compression, sha256: copied.storedSha256 },
      });
      filesDone += 1;
      bytesDone += copied.size;
      options.onProgress?.({ phase: "copying", filesDone, filesTotal: files.length, bytesDone, bytesTotal });
    });
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
    logger.info({ id, startLsn, stopLsn: stop.lsn, copyMs: copiedAtMs - startedAt.getTime() }, "backup copied; waiting for its WAL to be archived");
    options.onProgress?.({ phase: "waiting-for-wal", filesDone, filesTotal: files.length, bytesDone, bytesTotal: bytesDone });
    await deps.archiver.waitForArchived(timeline, startLsn, stop.lsn, options.archiveTimeoutMs);
    logger.info({ id, walWaitMs: Date.now() - copiedAtMs }, "backup's WAL archived");

    await syncFileSystem(repository.backupDir(id));
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
