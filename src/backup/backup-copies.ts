import { ErrorCode, RelevoError } from "../errors";
import type { EventLog } from "../events/event-log";
import type { Logger } from "../log";
import type { NumberedRepository, RepositorySet } from "../storage/repository-set";
import { backupChain } from "./backup-chain";
import { backupCopiedEvent, backupCopyFailedEvent } from "./backup-events";
import { withLockedBackup } from "./backup-lock";
import { ancestorsToCopy, copiesToRetry, copyStatusOf, type CopyStatus } from "./backup-targets";
import { copyToRepository } from "./copy-to-repository";
import type { BackupStatus, ManifestSummary } from "./manifest";

export interface BackupCopiesDeps {
  readonly repositories: RepositorySet;
  readonly events: EventLog;
  readonly logger: Logger;
  readonly parallelism: number;
  /** How long a copy waits for the WAL its backup needs to reach the target (RELEVO_ARCHIVE_TIMEOUT_MS). */
  readonly walTimeoutMs: number;
}

/** Each repository's manifest summaries by backup id, or the error that kept it from being listed. */
export type SummariesByRepository = ReadonlyMap<number, ReadonlyMap<string, ManifestSummary> | Error>;

/** A backup's copy in one repository, as its manifest there says (see copyStatusOf); unknown while it cannot be read. */
export interface BackupCopyState {
  readonly repository: number;
  readonly status: CopyStatus | "unknown";
  /** What the copy holds in that repository (completed only). */
  readonly storedBytes: number | null;
  readonly error: string | null;
}

/**
 * Copies of backups from the repository they were taken into to the
 * others (RELEVO_BACKUP_REPO=all): run after the backup completed, never
 * before (a slow or unreachable repository never holds a backup's own
 * completion back), one repository after another, under each copied
 * backup's lock (and its chain's: an expiry does not pull a chain away
 * from under its copy). A copy that fails raises `backup:copy-failed` and
 * is retried after the next backup (see copiesToRetry).
 */
export class BackupCopies {
  constructor(private readonly deps: BackupCopiesDeps) {}

  /**
   * Copies backup `id`, taken into repository `from`, to each of `to`,
   * with the backups it builds on that a target lacks and the earlier copies
   * there that failed or were cut off. Never throws: each failure is an
   * event and a log line.
   */
  async copyAfterBackup(id: string, from: number, to: readonly number[]): Promise<void> {
    const source = this.deps.repositories.byIndex(from);
    for (const index of to) {
      let target: NumberedRepository;
      let pending: string[];
      try {
        // A repository not opened yet (its store did not answer at the start) fails here: retried once it is.
        target = this.deps.repositories.byIndex(index);
        pending = await this.pendingIn(source, target, id);
      } catch (error) {
        await this.failed(id, index, error as Error);
        continue;
      }
      for (const copied of pending) {
        const failure = await this.copyOne(source, target, copied);
        // The target not answering: every later copy would fail the same way (each after its timeouts). Any other
        // failure is this backup's (a damaged object, its WAL gone from the target): the others are still copied (a
        // later one building on it tries it again as its ancestor, and fails with its own event).
        if (failure instanceof RelevoError && failure.code === ErrorCode.RepositoryUnavailable) break;
      }
    }
  }

  /**
   * Each repository's copy of backup `id`, lowest number first, from the
   * repositories' (cached) manifest summaries; `unknown`, with the reason,
   * for a repository that cannot be read now (a store that is down must
   * not take the other repositories' answer with it).
   */
  async copiesOf(id: string, summaries?: SummariesByRepository): Promise<BackupCopyState[]> {
    const byRepository = summaries ?? (await this.summariesByRepository());
    return this.deps.repositories.members.map((member) => {
      const listed = byRepository.get(member.index);
      if (listed instanceof Error) return { repository: member.index, status: "unknown", storedBytes: null, error: listed.message };
      const summary = listed?.get(id) ?? null;
      const status = copyStatusOf(summary?.status ?? null);
      return {
        repository: member.index,
        status,
        storedBytes: status === "completed" ? summary!.storedBytes : null,
        error: status === "failed" ? summary!.error : null,
      };
    });
  }

  /** Every repository's manifest summaries by backup id (a listing each; see listManifestSummaries), or why it cannot be read. */
  async summariesByRepository(): Promise<SummariesByRepository> {
    const entries = await Promise.all(
      this.deps.repositories.members.map(async (member) => {
        const listed = await member.repository.listManifestSummaries().then(
          (summaries) => new Map(summaries.map((summary) => [summary.id, summary])),
          (error: Error) => error,
        );
        return [member.index, listed] as const;
      }),
    );
    return new Map(entries);
  }

  /** What to copy into `target`: earlier copies to retry, the backup's missing ancestors and the backup, oldest first. */
  private async pendingIn(source: NumberedRepository, target: NumberedRepository, id: string): Promise<string[]> {
    const sourceSummaries = await source.repository.listManifestSummaries();
    const targetStatus = new Map<string, BackupStatus>(
      (await target.repository.listManifestSummaries()).map((summary) => [summary.id, summary.status]),
    );
    const completedInTarget = new Set([...targetStatus].filter(([, status]) => status === "completed").map(([key]) => key));
    const wanted = new Set<string>();
    for (const candidate of [
      ...copiesToRetry(
        sourceSummaries.filter((s) => s.status === "completed"),
        target.index,
        targetStatus,
      ),
      id,
    ]) {
      const manifest = await source.repository.readManifest(candidate);
      if (!manifest) continue;
      for (const ancestor of ancestorsToCopy(await backupChain(source.repository, manifest), candidate, completedInTarget)) {
        wanted.add(ancestor);
      }
      if (!completedInTarget.has(candidate)) wanted.add(candidate);
    }
    // Ids sort by start time: every backup comes after those it builds on.
    return [...wanted].sort();
  }

  /** Copies backup `id` to `target`; null when it is there, else the failure (reported: event and log). */
  private async copyOne(source: NumberedRepository, target: NumberedRepository, id: string): Promise<Error | null> {
    const startedAt = Date.now();
    try {
      const copied = await withLockedBackup(
        { repository: source.repository, logger: this.deps.logger },
        { id, purpose: `copy to repo${target.index}` },
        async () => {
          // Copied meanwhile by another pass (the next backup's, while this waited for the lock).
          const there = await target.repository.readManifest(id);
          if (there?.status === "completed") return null;
          return copyToRepository({
            source: source.repository,
            target: target.repository,
            id,
            parallelism: this.deps.parallelism,
            walTimeoutMs: this.deps.walTimeoutMs,
          });
        },
      );
      if (copied) await this.deps.events.emit(backupCopiedEvent(copied, target.index, Date.now() - startedAt));
      return null;
    } catch (error) {
      await this.failed(id, target.index, error as Error);
      return error as Error;
    }
  }

  private async failed(id: string, repository: number, error: Error): Promise<void> {
    const event = backupCopyFailedEvent(id, repository, error.message);
    this.deps.logger.warn({ backupId: id, repository, err: error.message }, event.message);
    await this.deps.events.emit(event).catch(() => undefined);
  }
}
