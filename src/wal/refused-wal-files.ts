/**
 * The received WAL files the pusher refused (see wal-file-check.ts, and
 * putWalFile: one that cannot be opened or read, or fails its checks, or a
 * history the archive holds with other content), and what it does about
 * each: skipped, not tried again at every pass (review 21, M2: one such
 * file tried every 200 ms made a tight loop of failures and warnings);
 * reported once (an event, and the cluster's health while it lasts);
 * logged again only now and then.
 *
 * A refused file is tried again at once when it changed (its fingerprint:
 * inode, size, times), e.g. replaced by a valid one, and else after a back
 * off (a failure of the disk may pass; a history refused as different may
 * meet an archive whose history was set aside meanwhile, review 21, L2).
 * It is forgotten when it is gone from the spool or passes. No I/O: the
 * caller passes the time and the fingerprints.
 */

export interface RefusedWalFile {
  readonly name: string;
  readonly reason: string;
  /** When it was first refused (ms). */
  readonly since: number;
}

interface Refusal extends RefusedWalFile {
  readonly fingerprint: string | null;
  readonly tries: number;
  readonly retryAt: number;
  readonly loggedAt: number;
}

export interface RefusedWalFilesOptions {
  /** The first back-off before a refused file that has not changed is tried again; doubled at each try. */
  readonly retryMinMs: number;
  /** The longest back-off. */
  readonly retryMaxMs: number;
  /** How often a refusal that lasts is logged again. */
  readonly logEveryMs: number;
}

export const REFUSED_WAL_DEFAULTS: RefusedWalFilesOptions = { retryMinMs: 5_000, retryMaxMs: 5 * 60_000, logEveryMs: 10 * 60_000 };

export class RefusedWalFiles {
  private readonly refusals = new Map<string, Refusal>();

  constructor(private readonly options: RefusedWalFilesOptions = REFUSED_WAL_DEFAULTS) {}

  /** The refused names among those in the spool now; the others (gone) are forgotten. */
  present(names: readonly string[]): string[] {
    const listed = new Set(names);
    for (const name of this.refusals.keys()) if (!listed.has(name)) this.refusals.delete(name);
    return [...this.refusals.keys()];
  }

  /** Whether a pass skips `name`: refused, not changed since (`fingerprint`), its back-off not over. */
  skips(name: string, fingerprint: string | null, now: number): boolean {
    const refusal = this.refusals.get(name);
    return refusal !== undefined && refusal.fingerprint === fingerprint && now < refusal.retryAt;
  }

  /**
   * Records that `name` was refused (again): `report` when it was not
   * refused before (an event), `log` when it is to be logged now.
   */
  refuse(name: string, reason: string, fingerprint: string | null, now: number): { readonly report: boolean; readonly log: boolean } {
    const before = this.refusals.get(name);
    const tries = (before?.tries ?? 0) + 1;
    const backOff = Math.min(this.options.retryMaxMs, this.options.retryMinMs * 2 ** (tries - 1));
    const log = !before || before.reason !== reason || now - before.loggedAt >= this.options.logEveryMs;
    this.refusals.set(name, {
      name,
      reason,
      since: before?.since ?? now,
      fingerprint,
      tries,
      retryAt: now + backOff,
      loggedAt: log ? now : before.loggedAt,
    });
    return { report: !before, log };
  }

  /** `name` passed (pushed, the archive's own, held or gone): no longer refused. Whether it was. */
  clear(name: string): boolean {
    return this.refusals.delete(name);
  }

  has(name: string): boolean {
    return this.refusals.has(name);
  }

  /** What is refused now, oldest first. */
  list(): RefusedWalFile[] {
    return [...this.refusals.values()]
      .sort((a, b) => a.since - b.since || a.name.localeCompare(b.name))
      .map(({ name, reason, since }) => ({ name, reason, since }));
  }
}
