import { ErrorCode, RelevoError } from "../errors";
import { segmentFilesAlong, timelinePath } from "../postgres/timelines";
import { segmentName } from "../postgres/wal-names";
import { contentObjectKey, removeBackupRemains, withoutDataKey } from "../storage/backup-content";
import type { Repository } from "../storage/repository";
import { sleep } from "../util/sleep";
import { contentFormOf, type BackupManifest } from "./manifest";

export interface CopyToRepositoryOptions {
  readonly source: Repository;
  readonly target: Repository;
  /** The backup: completed in `source`. */
  readonly id: string;
  /** Content objects copied at the same time. */
  readonly parallelism: number;
  /** How long the copy waits for the WAL the backup needs to reach the target's archive; then it fails. */
  readonly walTimeoutMs: number;
}

/**
 * Copies a completed backup from one repository to another, object by
 * object: each content object read (and checked) under the source's keys
 * and written under the target's, a new data key of its own when the
 * target is encrypted (never raw bytes between repositories: their keys
 * differ, and an object's proof covers its key). The manifest is written
 * `running` first (the copy shows as copying, and a copy cut off by a crash
 * is retried), and published completed last, once every object is there
 * and the target's archive holds the WAL from the backup's start to its
 * stop: a backup is a backup in a repository only then. On failure the
 * copy's record is left failed, its content and data key removed (as a
 * failed backup's), when the target can still be written. Returns the
 * target's manifest.
 */
export async function copyToRepository(options: CopyToRepositoryOptions): Promise<BackupManifest> {
  const { source, target, id } = options;
  const manifest = await source.readManifest(id);
  if (manifest?.status !== "completed") {
    throw new RelevoError(ErrorCode.PreconditionFailed, `backup ${id} is not completed in ${source.location}: it is not copied`);
  }
  if (contentFormOf(manifest) !== "object") {
    throw new RelevoError(
      ErrorCode.PreconditionFailed,
      `backup ${id} is stored as files by path (manifest version ${manifest.formatVersion}): only backups stored as objects are copied`,
    );
  }
  const copy = await target.withNewDataKey({ ...withoutDataKey(manifest), status: "running" });
  try {
    await target.writeManifest(copy);
    await copyContent(options, manifest, copy);
    await waitForWalIn(target, manifest, options.walTimeoutMs);
    const completed: BackupManifest = { ...copy, status: "completed" };
    await target.writeManifest(completed);
    return completed;
  } catch (error) {
    const reason = (error as Error).message;
    // A target that is down cannot take the record either: it stays `running` (copying) until the retry.
    await removeBackupRemains(target, { ...copy, status: "failed", error: `copy failed: ${reason}` }).catch(() => undefined);
    throw new RelevoError(isTimeout(error) ? ErrorCode.Timeout : ErrorCode.RepositoryUnavailable, reason, { cause: error });
  }
}

/** Every content object the manifest names, decoded from the source and encoded into the target under the copy's data key. */
async function copyContent(options: CopyToRepositoryOptions, manifest: BackupManifest, copy: BackupManifest): Promise<void> {
  const { source, target, id } = options;
  const paths = [...new Set(manifest.files.flatMap((entry) => (entry.stored && entry.stored.bytes > 0 ? [entry.stored.path] : [])))];
  const dataKey = await target.dataKeyOf(copy);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < paths.length) {
      const relative = paths[next++]!;
      const body = await source.objects.getStream(contentObjectKey(source, id, relative));
      try {
        await target.objects.putStream(contentObjectKey(target, id, relative), body, { dataKey });
      } finally {
        body.destroy();
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(options.parallelism, paths.length)) }, worker));
}

/** The WAL segment files a backup needs (its start to its stop, along its timeline's history in `repository`) that it lacks. */
export async function missingBackupWal(
  repository: Repository,
  manifest: Pick<BackupManifest, "timeline" | "startLsn" | "stopLsn">,
): Promise<string[]> {
  const history = manifest.timeline === 1 ? null : await repository.archivedHistory(manifest.timeline);
  const files = segmentFilesAlong(timelinePath(manifest.timeline, history), manifest.startLsn, manifest.stopLsn ?? manifest.startLsn);
  return repository.archive.missing(files.map((file) => segmentName(file.timeline, file.segment)));
}

/** Waits (polling the target's archive index) until it holds the backup's WAL; TIMEOUT naming what is missing after `timeoutMs`. */
async function waitForWalIn(target: Repository, manifest: BackupManifest, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const missing = await missingBackupWal(target, manifest);
    if (missing.length === 0) return;
    if (Date.now() > deadline) {
      throw new RelevoError(
        ErrorCode.Timeout,
        `the WAL backup ${manifest.id} needs is not in ${target.location} after ${timeoutMs} ms: missing ` +
          `${missing.slice(0, 3).join(", ")}${missing.length > 3 ? "…" : ""}`,
      );
    }
    await sleep(250);
  }
}

function isTimeout(error: unknown): boolean {
  return error instanceof RelevoError && error.code === ErrorCode.Timeout;
}
