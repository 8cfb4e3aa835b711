import type { RelevoConfig } from "../config/config";
import { describeRepository, type RepositorySettings } from "../config/repository-config";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import type { OsIdentity } from "../nodes/os-user";
import type { BackupLocks } from "./backup-locks";
import { openConfiguredRepository } from "./open-repository";
import { walSpoolDir, type Repository } from "./repository";

/** One configured repository, opened: its number (RELEVO_REPO<n>_), its settings, and the repository. */
export interface NumberedRepository {
  readonly index: number;
  readonly settings: RepositorySettings;
  readonly repository: Repository;
}

/**
 * Every configured repository, opened, in the order of their numbers
 * (pgBackRest's repo1, repo2, …): the WAL archive is pushed to each, a
 * backup is written to one or to all, a restore reads the first that has
 * what it needs. They share this data home's WAL spool (one pg_receivewal
 * per cluster; each repository's pusher takes from it). Closed together.
 */
export class RepositorySet {
  readonly members: readonly NumberedRepository[];

  constructor(members: readonly NumberedRepository[]) {
    if (members.length === 0) throw new RelevoError(ErrorCode.Internal, "a repository set needs at least one repository");
    this.members = [...members].sort((a, b) => a.index - b.index);
  }

  /**
   * The lowest-numbered repository: where a backup is taken before it is
   * copied to the others, the one whose descriptor decides the data home's
   * cluster at a first start, and the one a caller that reads "the"
   * repository (a decision that is per repository by nature) reads.
   */
  get first(): NumberedRepository {
    return this.members[0]!;
  }

  /** The repositories themselves, lowest number first. */
  get repositories(): Repository[] {
    return this.members.map((member) => member.repository);
  }

  /** Repository `index`; NOT_FOUND naming the configured ones when there is none. */
  byIndex(index: number): NumberedRepository {
    const member = this.members.find((candidate) => candidate.index === index);
    if (!member) {
      throw new RelevoError(
        ErrorCode.NotFound,
        `no repository ${index}: the configured repositories are ${this.members.map((m) => `repo${m.index}`).join(", ")}`,
        { details: { repository: index } },
      );
    }
    return member;
  }

  /** Each repository's stores closed (uploads abandoned, connections ended), every one tried whatever the others did. */
  async close(): Promise<void> {
    const failures = (await Promise.allSettled(this.members.map((member) => member.repository.close()))).filter(
      (outcome): outcome is PromiseRejectedResult => outcome.status === "rejected",
    );
    if (failures.length > 0) throw failures[0]!.reason;
  }
}

/**
 * Every repository the configuration names, opened as the service or a
 * command opens repository 1 (see openConfiguredRepository: keys, the
 * descriptor, its cluster), with this data home's spool. One that fails
 * to open fails the whole open, and those already opened are closed: a
 * service that silently dropped a configured repository would archive to
 * fewer places than its operator believes.
 */
export async function openClusterRepositories(
  config: Pick<RelevoConfig, "repositories" | "home">,
  options: { readonly walOwner: OsIdentity | null; readonly locks: BackupLocks; readonly create: boolean; readonly logger: Logger },
): Promise<RepositorySet> {
  const { logger, ...rest } = options;
  const opened: NumberedRepository[] = [];
  try {
    for (const settings of config.repositories) {
      const repository = await openConfiguredRepository({
        settings,
        spoolDir: walSpoolDir(config.home),
        home: config.home,
        storeContext: { home: config.home, logger },
        ...rest,
      }).catch((error: unknown) => {
        if (error instanceof RelevoError) throw error;
        throw new RelevoError(ErrorCode.RepositoryUnavailable, `${describeRepository(settings)}: ${(error as Error).message}`, {
          cause: error,
        });
      });
      opened.push({ index: settings.index, settings, repository });
    }
  } catch (error) {
    await Promise.allSettled(opened.map((member) => member.repository.close()));
    throw error;
  }
  return new RepositorySet(opened);
}

/** `work` over every configured repository opened for a command (see openClusterRepositories), closed after it whatever its outcome. */
export async function withClusterRepositories<T>(
  config: Pick<RelevoConfig, "repositories" | "home">,
  options: Parameters<typeof openClusterRepositories>[1],
  work: (repositories: RepositorySet) => Promise<T>,
): Promise<T> {
  const repositories = await openClusterRepositories(config, options);
  try {
    return await work(repositories);
  } finally {
    await repositories.close();
  }
}
