import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import type { Repository } from "../storage/repository";
import { backupChain } from "./backup-chain";
import type { BackupManifest } from "./manifest";

/** A backup whose lock (and its chain's) the holder has: its manifest as read under the lock. */
export interface LockedBackup {
  readonly manifest: BackupManifest;
  /** The backups locked: this one and those it builds on. */
  readonly ids: readonly string[];
  /** Aborted (LOCK_LOST) once one of the locks lapsed: see HeldBackupLocks.lost. */
  readonly lost: AbortSignal;
}

/**
 * How long a verification or restore waits for another holder of a backup's
 * lock by default: longer than a restore test may run (its node start and
 * checks are bounded by the start timeout, 30 min at most), so a wait only
 * ends in LOCK_HELD when the holder is stuck.
 */
export const BACKUP_LOCK_WAIT_MS = 35 * 60_000;

/**
 * Whether a backup that expiry found locked has been held for long enough
 * to tell the operator: longer than any verification or restore may wait
 * for it (BACKUP_LOCK_WAIT_MS), so the holder is stuck, and the backup and
 * the WAL it needs are kept until it lets go. `since` is the holder's own
 * clock, close enough at this scale. Pure.
 */
export function heldBackTooLong(since: string, now: number): boolean {
  const sinceMs = Date.parse(since);
  return Number.isFinite(sinceMs) && now - sinceMs > BACKUP_LOCK_WAIT_MS;
}

/** A LockedBackup its holder releases itself: for a hold that outlives one call (a seeded replica's catch-up). */
export interface HeldBackup extends LockedBackup {
  release(): Promise<void>;
}

/**
 * Runs `work` holding the repository lock of a backup and of every backup
 * it builds on (a restore reads them all; expiring the full under a
 * differential would pull its content away), across processes. The
 * manifest is read again once the locks are held: what a verification or
 * restore sees is what no expiry can change until it is done. Verification,
 * restore and expiry of one backup therefore run one after another.
 * A wait is bounded (`lock.waitMs`).
 */
export async function withLockedBackup<T>(
  options: { readonly repository: Repository; readonly logger: Logger },
  lock: {
    readonly id: string;
    readonly purpose: string;
    /** How long to wait for another holder (default BACKUP_LOCK_WAIT_MS; 0 tries once), then LOCK_HELD. */
    readonly waitMs?: number;
  },
  work: (locked: LockedBackup) => Promise<T>,
): Promise<T> {
  const held = await lockBackup(options, lock);
  try {
    return await work(held);
  } finally {
    await held.release();
  }
}

/** withLockedBackup's locking alone: the caller releases what it returns (on every path). */
export async function lockBackup(
  options: { readonly repository: Repository; readonly logger: Logger },
  lock: { readonly id: string; readonly purpose: string; readonly waitMs?: number },
): Promise<HeldBackup> {
  const { repository, logger } = options;
  const { id, purpose } = lock;
  const before = await readOrNotFound(repository, id);
  // A broken chain is locked as far as it goes; the work under the lock reports it.
  const chainBefore = await backupChain(repository, before).catch(() => null);
  const chain = chainBefore ?? [before];
  const held = await repository.lockBackups(
    chain.map((link) => link.id),
    {
      purpose,
      waitMs: lock.waitMs ?? BACKUP_LOCK_WAIT_MS,
      onWait: (waitedFor, holder) =>
        logger.info(
          { backupId: waitedFor, holder: { purpose: holder.purpose, pid: holder.pid, host: holder.host, since: holder.since } },
          `${purpose} of backup ${id} waits for another holder of backup ${waitedFor}'s lock`,
        ),
    },
  );
  try {
    const manifest = await readOrNotFound(repository, id);
    if (chainBefore !== null) {
      // The chain again, as the locks hold it now: while this waited, an expiry may have let a backup it builds on
      // go. That is no damage of this backup (no failed verification is written): it is refused like itself expired.
      const after = await backupChain(repository, manifest).then(
        (links) => links.map((link) => link.id),
        (error: Error) => error,
      );
      const change = chainChange(
        chainBefore.map((link) => link.id),
        after,
      );
      if (change !== null)
        throw new RelevoError(ErrorCode.PreconditionFailed, `${purpose} of backup ${id}: ${change} while it waited for its lock`, {
          details: { backupId: id },
        });
    }
    return { manifest, ids: held.ids, lost: held.lost, release: () => held.release() };
  } catch (error) {
    await held.release();
    throw error;
  }
}

/**
 * How a backup's chain changed between the look before its locks were
 * taken (every link completed) and the look under them, or null when it is
 * the same: a link no longer completed (expired meanwhile), or other links.
 * Pure.
 */
export function chainChange(before: readonly string[], after: readonly string[] | Error): string | null {
  if (after instanceof Error) return `its chain changed (${after.message})`;
  if (before.length !== after.length || before.some((id, index) => after[index] !== id))
    return `its chain changed from ${before.join(" ← ")} to ${after.join(" ← ")}`;
  return null;
}

async function readOrNotFound(repository: Repository, id: string): Promise<BackupManifest> {
  const manifest = await repository.readManifest(id);
  if (!manifest) throw new RelevoError(ErrorCode.NotFound, `no backup with id ${id}`);
  return manifest;
}
