import { mkdir } from "node:fs/promises";
import path from "node:path";
import { acquireFileLock, lockHolder, type HeldFileLock, type LockHolder } from "./file-lock";

export type { LockHolder } from "./file-lock";

/**
 * Locks on the repository's backups, one file per backup under
 * `<repository>/locks/<id>.lock` (see file-lock.ts: held across processes
 * and hosts, broken once its holder is gone), since the service
 * (verification, expiry, restores through the API) and the CLI (`relevo
 * restore`, which runs without the service) touch the same backups.
 */

/** Locks held on some backups; release them once done (also by `await using`). */
export interface HeldBackupLocks extends AsyncDisposable {
  readonly ids: readonly string[];
  release(): Promise<void>;
}

export interface LockOptions {
  readonly purpose: string;
  /** How long to wait for each lock held by another (0: try once); then LOCK_HELD naming the file and its holder. */
  readonly waitMs: number;
  /** Called once per lock this has to wait for, with who holds it. */
  readonly onWait?: (id: string, holder: LockHolder) => void;
  readonly pollMs?: number;
}

export class BackupLocks {
  readonly directory: string;

  constructor(
    repositoryRoot: string,
    /** How often a held lock's file is touched (default LOCK_REFRESH_MS); tests shorten it. */
    private readonly options: { readonly refreshMs?: number } = {},
  ) {
    this.directory = path.join(repositoryRoot, "locks");
  }

  /**
   * Locks every backup of `ids`, waiting for each while another holder (in
   * this process or another) has it. Always taken in id order, so two
   * callers locking overlapping sets cannot deadlock.
   */
  async acquire(ids: readonly string[], options: LockOptions): Promise<HeldBackupLocks> {
    await mkdir(this.directory, { recursive: true, mode: 0o700 });
    const sorted = [...new Set(ids)].sort();
    const held: HeldFileLock[] = [];
    const release = async (): Promise<void> => {
      for (const lock of held.splice(0).reverse()) await lock.release();
    };
    try {
      for (const id of sorted) {
        held.push(
          await acquireFileLock(this.fileOf(id), {
            purpose: options.purpose,
            waitMs: options.waitMs,
            pollMs: options.pollMs,
            refreshMs: this.options.refreshMs,
            onWait: (holder) => options.onWait?.(id, holder),
          }),
        );
      }
    } catch (error) {
      await release();
      throw error;
    }
    return { ids: sorted, release, [Symbol.asyncDispose]: release };
  }

  /** Who holds a backup's lock now; null when nobody does. */
  async holder(id: string): Promise<LockHolder | null> {
    return lockHolder(this.fileOf(id));
  }

  fileOf(id: string): string {
    // Ids are checked before they get here (Repository.backupDir); a path separator would still never make it a path.
    return path.join(this.directory, `${id.replace(/[^A-Za-z0-9-]/g, "_")}.lock`);
  }
}
