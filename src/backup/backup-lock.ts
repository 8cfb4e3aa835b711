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
  const { repository, logger } = options;
  const { id, purpose } = lock;
  const before = await readOrNotFound(repository, id);
  // A broken chain is locked as far as it goes; the work under the lock reports it.
  const chain = await backupChain(repository, before).catch(() => [before]);
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
    return await work({ manifest: await readOrNotFound(repository, id), ids: held.ids });
  } finally {
    await held.release();
  }
}

async function readOrNotFound(repository: Repository, id: string): Promise<BackupManifest> {
  const manifest = await repository.readManifest(id);
  if (!manifest) throw new RelevoError(ErrorCode.NotFound, `no backup with id ${id}`);
  return manifest;
}
