import type { Credentials } from "../postgres/connection";
import type { Logger } from "../log";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import type { Repository } from "../storage/repository";
import type { WalArchiver } from "../wal/wal-archiver";
import type { WalSummarizer } from "../wal/wal-summary";
import { completedManifest, failBackup } from "./backup-complete";
import { copyBackupFiles, listBackupFiles } from "./backup-copy";
import { BackupSession } from "./backup-session";
import { decideType, inspectSource, newManifest, startBackup, typedManifest } from "./backup-start";
import { stopBackup, waitForBackupWal } from "./backup-stop";
import type { BackupManifest, BackupType, Compression } from "./manifest";
import { findChangesSinceReference } from "./reference-changes";

export interface CopyProgress {
  readonly phase: "copying" | "waiting-for-wal";
  readonly filesDone: number;
  readonly filesTotal: number;
  readonly bytesDone: number;
  readonly bytesTotal: number;
  /** Bytes put into the repository so far (compressed, encrypted: what an upload sends). */
  readonly bytesStored: number;
}

export interface BackupDeps {
  readonly clusterName: string;
  readonly driver: NodeDriver;
  readonly repository: Repository;
  readonly archiver: WalArchiver;
  /** Per-segment summaries of the archive: where a differential or incremental finds its changed blocks. */
  readonly summarizer: WalSummarizer;
  readonly superuser: Credentials;
  readonly logger: Logger;
}

export interface BackupOptions {
  /** As asked for: a differential or incremental without a usable reference is taken as a full (and says why). */
  readonly type: BackupType;
  /**
   * What a differential or incremental builds on: the newest full, or the
   * newest backup of any type (the caller chooses); null when there is none.
   */
  readonly reference: BackupManifest | null;
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
  /** The repositories the backup is copied to once completed (recorded in its manifest: see BackupManifest.copyTo). */
  readonly copyTo?: readonly number[];
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
 *
 * A differential or incremental stores only the blocks of each relation
 * file that the WAL between its reference's start and its own start
 * touched (see change-plan for what is copied whole); without that WAL it
 * scans page LSNs; a reference on another history makes it a full.
 */
export async function takeBackup(deps: BackupDeps, options: BackupOptions): Promise<BackupManifest> {
  const { driver, repository, archiver, summarizer, logger } = deps;
  const { source, switchWalOnPrimary, onProgress, archiveTimeoutMs } = options;
  const startedAt = new Date();
  const session = new BackupSession({ source, superuser: deps.superuser });
  let manifest = newManifest({ clusterName: deps.clusterName, type: options.type, source, compression: options.compression, startedAt });
  if (options.copyTo && options.copyTo.length > 0) manifest = { ...manifest, copyTo: [...options.copyTo] };
  try {
    await session.connect();
    const facts = await inspectSource(session);
    const decided = decideType(options, facts);
    const { reference } = decided;
    // Its own data key in an encrypted repository: the manifest and every content object are written under it.
    manifest = await repository.withNewDataKey(typedManifest(manifest, { decided, source: facts, startedAt }));
    const { id } = manifest;
    const started = await startBackup({ session, repository, manifest, onStart: options.onStart });

    // A block-level backup needs the WAL up to its own start, archived and summarised.
    const found = reference
      ? await findChangesSinceReference({
          session,
          archiver,
          summarizer,
          logger,
          id,
          reference,
          source: facts,
          started,
          archiveTimeoutMs,
          switchWalOnPrimary,
        })
      : null;
    if (found) manifest = { ...manifest, changesFrom: found.changesFrom };

    const list = await listBackupFiles({ driver, source });
    const copied = await copyBackupFiles({
      driver,
      repository,
      session,
      source,
      id,
      dataKeyId: manifest.dataKeyId,
      list,
      reference,
      changes: found?.changes ?? null,
      checkpointedAtMs: started.checkpointedAtMs,
      compression: options.compression,
      parallelism: options.parallelism,
      onProgress,
    });
    const stopped = await stopBackup({ session, inRecovery: facts.inRecovery, switchWalOnPrimary });
    await waitForBackupWal({ archiver, repository, logger, id, startedAt, started, copied, stopped, archiveTimeoutMs, onProgress });

    // Every content object is durable once its put resolved: the manifest may say the backup is complete.
    manifest = completedManifest(manifest, { stopped, entries: copied.entries });
    await repository.writeManifest(manifest);
    return manifest;
  } catch (error) {
    throw await failBackup({ repository, session, manifest, error, logger });
  }
}
