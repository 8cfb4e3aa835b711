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

/** A configured repository whose store did not answer when the service started: opened in the background (see openPending). */
export interface PendingRepository {
  readonly index: number;
  readonly settings: RepositorySettings;
  /** Why it could not be opened, as last tried (never a credential: the store's own message). */
  readonly error: string;
  readonly since: string;
}

/**
 * Every configured repository, opened, in the order of their numbers
 * (pgBackRest's repo1, repo2, …): the WAL archive is pushed to each, a
 * backup is written to one or to all, a restore reads the first that has
 * what it needs. They share this data home's WAL spool (one pg_receivewal
 * per cluster; each repository's pusher takes from it). Closed together.
 *
 * A repository other than the lowest-numbered one whose store does not
 * answer at the service's start is *pending* (see openClusterRepositories):
 * the service runs without it, keeps the WAL it lacks (the hold slot waits
 * for it), fails its copies (retried), and joins it once it opens
 * (openPending, then the `joined` listeners: its pusher starts).
 */
export class RepositorySet {
  private opened: NumberedRepository[];
  private waiting: PendingRepository[];
  private readonly listeners: Array<(member: NumberedRepository) => void> = [];

  constructor(members: readonly NumberedRepository[], pending: readonly PendingRepository[] = []) {
    if (members.length === 0) throw new RelevoError(ErrorCode.Internal, "a repository set needs at least one repository");
    this.opened = [...members].sort((a, b) => a.index - b.index);
    this.waiting = [...pending];
  }

  /** The repositories opened, lowest number first (read each time: a pending one joins when it opens). */
  get members(): readonly NumberedRepository[] {
    return this.opened;
  }

  /** The configured repositories not opened yet (their stores did not answer). */
  get pending(): readonly PendingRepository[] {
    return this.waiting;
  }

  /** Every configured repository's number, opened or pending: what RELEVO_BACKUP_REPO=all copies a backup to. */
  get configured(): number[] {
    return [...this.opened.map((member) => member.index), ...this.waiting.map((member) => member.index)].sort((a, b) => a - b);
  }

  /**
   * The lowest-numbered repository: where a backup is taken before it is
   * copied to the others, the one whose descriptor decides the data home's
   * cluster at a first start, and the one a caller that reads "the"
   * repository (a decision that is per repository by nature) reads. Never
   * pending: the service does not start without it.
   */
  get first(): NumberedRepository {
    return this.opened[0]!;
  }

  /** The repositories themselves, lowest number first. */
  get repositories(): Repository[] {
    return this.opened.map((member) => member.repository);
  }

  /** Repository `index`; REPOSITORY_UNAVAILABLE while it is pending, NOT_FOUND naming the configured ones when there is none. */
  byIndex(index: number): NumberedRepository {
    const member = this.opened.find((candidate) => candidate.index === index);
    if (member) return member;
    const pending = this.waiting.find((candidate) => candidate.index === index);
    if (pending) {
      throw new RelevoError(
        ErrorCode.RepositoryUnavailable,
        `${describeRepository(pending.settings)} is not opened yet (since ${pending.since}: ${pending.error})`,
        { details: { repository: index } },
      );
    }
    throw new RelevoError(
      ErrorCode.NotFound,
      `no repository ${index}: the configured repositories are ${this.configured.map((n) => `repo${n}`).join(", ")}`,
      { details: { repository: index } },
    );
  }

  /** Calls `listener` with each pending repository once it has opened and joined the set. */
  onJoined(listener: (member: NumberedRepository) => void): void {
    this.listeners.push(listener);
  }

  /**
   * Tries to open each pending repository (`open`); one that opens joins
   * the set and the listeners hear of it; one that fails stays pending
   * with the new reason. Returns those that joined.
   */
  async openPending(open: (settings: RepositorySettings) => Promise<Repository>): Promise<NumberedRepository[]> {
    const joined: NumberedRepository[] = [];
    for (const pending of [...this.waiting]) {
      let repository: Repository;
      try {
        repository = await open(pending.settings);
      } catch (error) {
        this.waiting = this.waiting.map((each) => (each.index === pending.index ? { ...each, error: (error as Error).message } : each));
        continue;
      }
      const member: NumberedRepository = { index: pending.index, settings: pending.settings, repository };
      this.waiting = this.waiting.filter((each) => each.index !== pending.index);
      this.opened = [...this.opened, member].sort((a, b) => a.index - b.index);
      joined.push(member);
      for (const listener of this.listeners) listener(member);
    }
    return joined;
  }

  /** Each repository's stores closed (uploads abandoned, connections ended), every one tried whatever the others did. */
  async close(): Promise<void> {
    const failures = (await Promise.allSettled(this.opened.map((member) => member.repository.close()))).filter(
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
 * fewer places than its operator believes. With `pendingWhenUnreachable`
 * (the service on a data home that knows its cluster), a repository other
 * than the lowest-numbered whose store does not answer
 * (REPOSITORY_UNAVAILABLE) is pending instead: the service starts, says so
 * (a health reason), keeps the WAL it lacks, and opens it later. Any other
 * failure (a wrong pass, another cluster's repository, damage) is the
 * operator's to fix and still fails the start.
 */
export async function openClusterRepositories(
  config: Pick<RelevoConfig, "repositories" | "home">,
  options: {
    readonly walOwner: OsIdentity | null;
    readonly locks: BackupLocks;
    readonly create: boolean;
    readonly logger: Logger;
    readonly pendingWhenUnreachable?: boolean;
  },
): Promise<RepositorySet> {
  const opened: NumberedRepository[] = [];
  const pending: PendingRepository[] = [];
  const open = repositoryOpener(config, options);
  try {
    for (const settings of config.repositories) {
      try {
        opened.push({ index: settings.index, settings, repository: await open(settings) });
      } catch (error) {
        const unreachable = error instanceof RelevoError && error.code === ErrorCode.RepositoryUnavailable;
        if (!(options.pendingWhenUnreachable === true && unreachable && opened.length > 0)) throw error;
        options.logger.warn(
          { repository: settings.index, err: (error as Error).message },
          "a repository's store does not answer: the service starts without it and opens it when it does",
        );
        pending.push({ index: settings.index, settings, error: (error as Error).message, since: new Date().toISOString() });
      }
    }
  } catch (error) {
    await Promise.allSettled(opened.map((member) => member.repository.close()));
    throw error;
  }
  return new RepositorySet(opened, pending);
}

/** How a configured repository is opened for this data home (see openClusterRepositories); a non-Relevo failure is REPOSITORY_UNAVAILABLE. */
export function repositoryOpener(
  config: Pick<RelevoConfig, "home">,
  options: { readonly walOwner: OsIdentity | null; readonly locks: BackupLocks; readonly create: boolean; readonly logger: Logger },
): (settings: RepositorySettings) => Promise<Repository> {
  const { logger, walOwner, locks, create } = options;
  return (settings) =>
    openConfiguredRepository({
      settings,
      spoolDir: walSpoolDir(config.home),
      home: config.home,
      storeContext: { home: config.home, logger },
      walOwner,
      locks,
      create,
    }).catch((error: unknown) => {
      if (error instanceof RelevoError) throw error;
      throw new RelevoError(ErrorCode.RepositoryUnavailable, `${describeRepository(settings)}: ${(error as Error).message}`, {
        cause: error,
      });
    });
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
