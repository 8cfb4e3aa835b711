import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import { removeBackupContent, removeBackupRemains } from "../storage/backup-content";
import type { Repository } from "../storage/repository";
import type { BackupSession } from "./backup-session";
import type { StoppedBackup } from "./backup-stop";
import type { BackupManifest, ManifestEntry } from "./manifest";
import { blockCount } from "./relation-files";

/** Pure: the manifest of a completed backup, its entries sorted by path and its totals counted. */
export function completedManifest(
  manifest: BackupManifest,
  options: { readonly stopped: StoppedBackup; readonly entries: readonly ManifestEntry[] },
): BackupManifest {
  const { stopped } = options;
  const sorted = [...options.entries].sort((a, b) => a.path.localeCompare(b.path));
  const stored = sorted.filter((entry) => entry.type === "file" && entry.stored);
  return {
    ...manifest,
    status: "completed",
    timeline: stopped.timeline,
    startLsn: stopped.startLsn,
    stopLsn: stopped.stopLsn,
    stoppedAt: stopped.stoppedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    backupLabel: stopped.backupLabel,
    tablespaceMap: stopped.tablespaceMap,
    sizeBytes: sorted.reduce((sum, entry) => sum + entry.size, 0),
    storedBytes: stored.reduce((sum, entry) => sum + entry.stored!.bytes, 0),
    fileCount: sorted.filter((entry) => entry.type === "file").length,
    filesStored: stored.filter((entry) => !entry.blocks).length,
    blocksStored: sorted.reduce((sum, entry) => sum + (entry.blocks ? blockCount(entry.blocks) : 0), 0),
    files: sorted,
  };
}

/**
 * A failed backup leaves its manifest marked failed, and no content and
 * no data key. The error to throw: the session's own when it was lost (the
 * rest follows from it), with the backup's id. In an encrypted repository
 * the failed record is under the archive's key (see writeManifest): a
 * backup that failed before it had its data key (connecting, inspecting
 * the source, the key's own write) is recorded all the same.
 */
export async function failBackup(options: {
  readonly repository: Repository;
  readonly session: BackupSession;
  readonly manifest: BackupManifest;
  readonly error: unknown;
  readonly logger: Logger;
}): Promise<RelevoError> {
  const { repository, session, manifest, error, logger } = options;
  const id = manifest.id;
  await session.end();
  const cause = session.failure ?? (error as Error);
  const reason = cause.message;
  const failed: BackupManifest = { ...manifest, status: "failed", finishedAt: new Date().toISOString(), error: reason, files: [] };
  await removeBackupContent(repository, manifest).catch(() => undefined);
  // The failed record, then whatever content is left and the backup's data key (an expiry completes it if this stops).
  await removeBackupRemains(repository, failed).catch((writeError: Error) =>
    logger.error({ backupId: id, err: writeError.message }, `backup ${id} failed and its failed manifest or removal did not complete`),
  );
  // The engine's absence is the operator's to fix, and the same code everywhere; anything else failed the backup's commands.
  const code = cause instanceof RelevoError && cause.code === ErrorCode.DockerUnavailable ? cause.code : ErrorCode.CommandFailed;
  return new RelevoError(code, `backup ${id} failed: ${reason}`, { cause: error, details: { backupId: id } });
}
