import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import { removeBackupContent } from "../storage/backup-content";
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
 * A failed backup leaves its manifest marked failed and no content. The
 * error to throw: the session's own when it was lost (the rest follows from
 * it), with the backup's id. In an encrypted repository a backup that
 * failed before it had its data key (connecting, inspecting the source,
 * the key's own write) gets one for its failed manifest: it is recorded
 * all the same.
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
  const record = async (): Promise<void> =>
    repository.writeManifest(failed.dataKeyId === undefined ? await repository.withNewDataKey(failed) : failed);
  await record().catch((writeError: Error) =>
    logger.error({ backupId: id, err: writeError.message }, `backup ${id} failed and its failed manifest was not written`),
  );
  // The engine's absence is the operator's to fix, and the same code everywhere; anything else failed the backup's commands.
  const code = cause instanceof RelevoError && cause.code === ErrorCode.DockerUnavailable ? cause.code : ErrorCode.CommandFailed;
  return new RelevoError(code, `backup ${id} failed: ${reason}`, { cause: error, details: { backupId: id } });
}
