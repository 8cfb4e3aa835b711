import { ErrorCode, RelevoError } from "../errors";
import type { BackupManifest, BackupStatus } from "./manifest";

/**
 * Which repositories a backup goes to, what a copy of it needs, and what a
 * repository's manifest says of its copy. Pure.
 */

/** RELEVO_BACKUP_REPO: every configured repository, or one by its number. */
export type BackupRepositoryChoice = "all" | number;

/** Where a backup is taken (`taken`), and the repositories it is then copied to, lowest number first. */
export interface BackupTargets {
  readonly taken: number;
  readonly copies: readonly number[];
}

/**
 * The repositories a backup is written to: the one asked for (`asked`, a
 * createBackup's or `relevo backup create --repo`'s, which overrides the
 * configuration), else the configured choice. With every repository, it
 * is taken into the lowest-numbered one (its completion never waits on the
 * others) and copied to each other. NOT_FOUND naming the configured ones
 * for a number that is not one; BAD_USER_INPUT for one that is no number.
 */
export function backupTargets(options: {
  readonly configured: readonly number[];
  readonly choice: BackupRepositoryChoice;
  readonly asked?: number | null;
}): BackupTargets {
  const configured = [...options.configured].sort((a, b) => a - b);
  const { asked } = options;
  if (asked !== undefined && asked !== null) {
    if (!Number.isInteger(asked) || asked < 1) {
      throw new RelevoError(ErrorCode.BadUserInput, `repository ${asked} is not a repository's number (1, 2, …)`, {
        details: { field: "repository" },
      });
    }
    return { taken: one(configured, asked), copies: [] };
  }
  if (options.choice !== "all") return { taken: one(configured, options.choice), copies: [] };
  if (configured.length === 0) throw new RelevoError(ErrorCode.Internal, "no repository is configured");
  return { taken: configured[0]!, copies: configured.slice(1) };
}

function one(configured: readonly number[], index: number): number {
  if (!configured.includes(index)) {
    throw new RelevoError(
      ErrorCode.NotFound,
      `no repository ${index}: the configured repositories are ${configured.map((n) => `repo${n}`).join(", ")}`,
      { details: { repository: index } },
    );
  }
  return index;
}

/** A backup's copy in one repository, as that repository's manifest of it says. */
export type CopyStatus = "completed" | "copying" | "failed" | "absent";

/**
 * What a repository's manifest says of the backup's copy there: completed
 * once its manifest is (a backup is a backup in a repository only then),
 * copying while a copy (or the backup itself) is being written, failed,
 * and absent without a manifest or once it expired there (its content is
 * gone).
 */
export function copyStatusOf(status: BackupStatus | null): CopyStatus {
  switch (status) {
    case null:
    case "expired":
      return "absent";
    case "completed":
      return "completed";
    case "running":
      return "copying";
    case "failed":
      return "failed";
  }
}

/**
 * The backups to copy into a repository before `backup` can be (the
 * backups it builds on that the target holds no completed copy of), oldest
 * first: a differential or incremental restores only over its chain, so a
 * copy without its chain in the target would be no backup there. `chain`
 * is the backup's chain in the source, full first (see backupChain).
 */
export function ancestorsToCopy(
  chain: readonly Pick<BackupManifest, "id">[],
  backupId: string,
  completedInTarget: ReadonlySet<string>,
): string[] {
  return chain.map((link) => link.id).filter((id) => id !== backupId && !completedInTarget.has(id));
}

/**
 * The backups a later pass copies again into repository `target`: those
 * the source holds completed that were to be copied there (their manifest
 * names it in `copyTo`) and whose copy there is not completed: failed,
 * left unfinished (a copy cut off by a stop or a crash leaves its manifest
 * `running`), or absent without a manifest (the target was unreachable
 * before the copy wrote anything); oldest first. Never one the target
 * expired by its own retention, nor one written to a repository alone.
 */
export function copiesToRetry(
  sourceCompleted: readonly Pick<BackupManifest, "id" | "copyTo">[],
  target: number,
  targetStatus: ReadonlyMap<string, BackupStatus>,
): string[] {
  return sourceCompleted
    .filter((manifest) => manifest.copyTo?.includes(target))
    .map((manifest) => manifest.id)
    .filter((id) => !targetStatus.has(id) || ["failed", "running"].includes(targetStatus.get(id)!))
    .sort();
}

/**
 * The manifests of one backup across repositories merged into what the
 * catalog shows: the lowest-numbered repository's completed copy, else the
 * lowest-numbered one's manifest (a backup present in repository 2 alone
 * still shows). `byRepository` lowest number first.
 */
export function catalogManifest<M extends Pick<BackupManifest, "status">>(byRepository: readonly (M | null)[]): M | null {
  const present = byRepository.filter((manifest): manifest is M => manifest !== null);
  return present.find((manifest) => manifest.status === "completed") ?? present[0] ?? null;
}
