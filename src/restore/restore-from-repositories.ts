import type { BackupManifest } from "../backup/manifest";
import { ErrorCode, RelevoError, isRelevoError } from "../errors";
import type { RepositorySet } from "../storage/repository-set";
import type { RestoreOrder } from "./repository-order";
import { restoreBackup, type RestoreDeps, type RestoreOptions } from "./restore";
import { repositoriesWalSource, type WalSource } from "./wal-source";
import type { Repository } from "../storage/repository";

/** An attempt that failed on a repository's content, before the next repository is tried. */
export interface RepositoryFallback {
  readonly backupId: string;
  readonly target: string;
  /** The repository whose copy failed (its number). */
  readonly repository: number;
  readonly location: string;
  readonly code: string;
  readonly error: string;
  /** The repository tried next. */
  readonly next: number;
}

export interface RepositoriesRestoreDeps extends Omit<RestoreDeps, "repository" | "walSource"> {
  readonly repositories: RepositorySet;
  /** Told of each fallback as it happens (the service emits an event); the log has it either way. */
  readonly onFallback?: (fallback: RepositoryFallback) => Promise<void>;
}

/** Which repository a restore read the backup from, and the manifest as that repository holds it. */
export interface RestoredFromRepository {
  readonly manifest: BackupManifest;
  readonly repository: number;
  /** The attempts that failed before it, in order. */
  readonly fallbacks: readonly RepositoryFallback[];
}

/**
 * Whether a restore that failed so may succeed from another repository's
 * copy: an object missing (NOT_FOUND) or failing its check, or content
 * that does not decode or match its checksum (REPOSITORY_CORRUPT). Anything
 * else (the target, PostgreSQL, a timeout, a lost lock) would fail the
 * same way from any copy.
 */
export function isRepositoryContentFailure(error: unknown): boolean {
  return isRelevoError(error) && (error.code === ErrorCode.NotFound || error.code === ErrorCode.RepositoryCorrupt);
}

/**
 * restoreBackup from the repositories `plan` orders (see restoreOrder):
 * the first is tried; when its copy fails on its content, the target is
 * cleaned as any failed restore cleans it and the next is tried (see
 * fromEachRepository).
 */
export async function restoreFromRepositories(
  deps: RepositoriesRestoreDeps,
  options: Omit<RestoreOptions, "manifest"> & { readonly backupId: string; readonly plan: RestoreOrder },
): Promise<RestoredFromRepository> {
  const { backupId, plan, ...restoreOptions } = options;
  if (plan.order.length === 0) {
    const why = plan.standings.map((standing) => `repo${standing.index}: ${"why" in standing ? standing.why : "usable"}`).join("; ");
    throw new RelevoError(ErrorCode.PreconditionFailed, `no repository holds a complete copy of backup ${backupId} (${why})`, {
      details: { backupId },
    });
  }
  const restored = await fromEachRepository(deps, { backupId, target: options.target.name, order: plan.order }, async (attempt) => {
    await restoreBackup(
      { ...deps, repository: attempt.repository, walSource: attempt.walSource },
      { ...restoreOptions, manifest: attempt.manifest },
    );
  });
  const { repository, fallbacks } = restored;
  deps.logger.info(
    { backupId, target: options.target.name, repository, fallbacks: fallbacks.map((fallback) => fallback.repository) },
    fallbacks.length === 0
      ? `backup ${backupId} restored from repository ${repository}`
      : `backup ${backupId} restored from repository ${repository}, after ${fallbacks.map((f) => `repository ${f.repository}`).join(" and ")} failed`,
  );
  return { manifest: restored.manifest, repository, fallbacks };
}

/**
 * `work` with the repositories `order` names, in turn: each time with that
 * repository's manifest of the backup and a WAL source that reads it first
 * and then every other repository, segment by segment (see
 * repositoriesWalSource). A failure on the repository's content (see
 * isRepositoryContentFailure) moves on to the next one, logged and told to
 * `onFallback`; `work` has cleaned up what it made by then (a restore
 * destroys its failed copy). Any other failure, or the last one's, is the
 * caller's.
 */
export async function fromEachRepository<T>(
  deps: Pick<RepositoriesRestoreDeps, "repositories" | "logger" | "onFallback">,
  options: { readonly backupId: string; readonly target: string; readonly order: readonly number[] },
  work: (attempt: { readonly repository: Repository; readonly manifest: BackupManifest; readonly walSource: WalSource }) => Promise<T>,
): Promise<{
  readonly value: T;
  readonly manifest: BackupManifest;
  readonly repository: number;
  readonly fallbacks: RepositoryFallback[];
}> {
  const { backupId } = options;
  const fallbacks: RepositoryFallback[] = [];
  for (const [attempt, index] of options.order.entries()) {
    const { repository } = deps.repositories.byIndex(index);
    const others = deps.repositories.members.filter((other) => other.index !== index).map((other) => other.repository);
    try {
      const manifest = await repository.readManifest(backupId);
      if (!manifest) throw new RelevoError(ErrorCode.NotFound, `${repository.location}: no backup with id ${backupId}`);
      const walSource = repositoriesWalSource([repository, ...others], repository.spool);
      return { value: await work({ repository, manifest, walSource }), manifest, repository: index, fallbacks };
    } catch (error) {
      const next = options.order[attempt + 1];
      if (next === undefined || !isRepositoryContentFailure(error)) throw error;
      const fallback: RepositoryFallback = {
        backupId,
        target: options.target,
        repository: index,
        location: repository.location,
        code: (error as RelevoError).code,
        error: (error as Error).message,
        next,
      };
      deps.logger.warn(fallback, `backup ${backupId} from repository ${index} failed for ${options.target}: trying repository ${next}`);
      fallbacks.push(fallback);
      await deps.onFallback?.(fallback);
    }
  }
  throw new RelevoError(ErrorCode.Internal, `no repository to read backup ${backupId} from`);
}
