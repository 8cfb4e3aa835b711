import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import type { WalArchiver } from "../wal/wal-archiver";
import type { Repository } from "../storage/repository";
import type { CopiedFiles } from "./backup-copy";
import type { BackupSession } from "./backup-session";
import type { StartedBackup } from "./backup-start";
import { labelStartLsn, labelTimeline } from "./manifest";
import type { CopyProgress } from "./take-backup";

export interface StoppedBackup {
  /** The redo point, from the backup_label: WAL replay starts here. */
  readonly startLsn: string;
  readonly stopLsn: string;
  readonly timeline: number;
  readonly stoppedAt: Date;
  readonly backupLabel: string;
  readonly tablespaceMap: string | null;
}

/** pg_backup_stop on the session, which then ends: the backup_label (and tablespace map) PostgreSQL returns is what a restore needs. */
export async function stopBackup(options: {
  readonly session: BackupSession;
  /** A standby's backup: its last segment is closed on the primary. */
  readonly inRecovery: boolean;
  readonly switchWalOnPrimary: () => Promise<void>;
}): Promise<StoppedBackup> {
  const { session } = options;
  // On a primary, pg_backup_stop also switches to a new WAL segment, so the
  // last one the backup needs is complete and can be archived.
  const stop = (
    await session.client.query<{ lsn: string; labelfile: string; spcmapfile: string | null }>(
      "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)",
    )
  ).rows[0]!;
  const stoppedAt = new Date();
  if (options.inRecovery) await options.switchWalOnPrimary();
  const startLsn = labelStartLsn(stop.labelfile);
  const timeline = labelTimeline(stop.labelfile);
  if (!startLsn || timeline === null) throw new RelevoError(ErrorCode.Internal, `unexpected backup_label: ${stop.labelfile}`);
  await session.end();
  return {
    startLsn,
    stopLsn: stop.lsn,
    timeline,
    stoppedAt,
    backupLabel: stop.labelfile,
    tablespaceMap: stop.spcmapfile && stop.spcmapfile.length > 0 ? stop.spcmapfile : null,
  };
}

/** The backup counts only once the WAL from its start to its stop LSN is in the archive. */
export async function waitForBackupWal(options: {
  readonly archiver: WalArchiver;
  /** The repository the backup is written to: its WAL must be there. */
  readonly repository: Repository;
  readonly logger: Logger;
  readonly id: string;
  readonly startedAt: Date;
  readonly started: StartedBackup;
  readonly copied: CopiedFiles;
  readonly stopped: StoppedBackup;
  readonly archiveTimeoutMs: number;
  readonly onProgress?: (progress: CopyProgress) => void;
}): Promise<void> {
  const { logger, id, started, copied, stopped } = options;
  const copiedAtMs = Date.now();
  logger.info(
    {
      id,
      startLsn: stopped.startLsn,
      stopLsn: stopped.stopLsn,
      checkpointMs: started.checkpointedAtMs - options.startedAt.getTime(),
      copyMs: copiedAtMs - started.checkpointedAtMs,
    },
    "backup copied; waiting for its WAL to be archived",
  );
  options.onProgress?.({
    phase: "waiting-for-wal",
    filesDone: copied.filesDone,
    filesTotal: copied.filesTotal,
    bytesDone: copied.bytesDone,
    bytesTotal: copied.bytesDone,
    bytesStored: copied.bytesStored,
  });
  // In the repository the backup is written to: each repository's pusher goes at its own pace.
  await options.archiver.waitForArchived(stopped.timeline, stopped.startLsn, stopped.stopLsn, options.archiveTimeoutMs, {
    in: options.repository,
  });
  logger.info({ id, walWaitMs: Date.now() - copiedAtMs }, "backup's WAL archived");
}
