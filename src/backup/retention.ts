import type { BackupManifest } from "./manifest";
import { parseSegmentName, segmentNumber } from "../postgres/wal-names";

export interface RetentionPlan {
  /** Backups to mark expired (their content removed, the manifest kept as a record). */
  readonly expire: readonly string[];
  /** WAL segments numbered below this are needed by no kept backup (null: keep all). */
  readonly walBefore: number | null;
}

/** What a repository keeps (RELEVO_RETENTION_FULL / RELEVO_REPO<n>_RETENTION_FULL and _RETENTION_DAYS). */
export interface RetentionPolicy {
  /** The newest this many completed full backups are kept, with everything that builds on them. */
  readonly keepFull: number;
  /** Whatever restores to any point of the last this many days is kept; null: no time rule. */
  readonly keepDays: number | null;
  /** The time the days count back from. */
  readonly now: Date;
}

const DAY_MS = 24 * 60 * 60 * 1000;

/**
 * Which backups and WAL to let go. A completed backup is kept when either
 * rule keeps it, and with it every backup it builds on:
 *
 * - count: the newest `keepFull` full backups, with every differential or
 *   incremental that builds on them;
 * - time: every backup consistent within the last `keepDays` days, and the
 *   newest one consistent before that window began (the anchor a restore to
 *   the window's first moment replays from). Without such an anchor nothing
 *   is let go: the oldest backup is still needed to reach the window's start
 *   as closely as the archive allows.
 *
 * A backup is consistent from its stop (the end of its WAL), so that is the
 * time the window is judged on. WAL: a backup needs the archive from its own
 * start (redo) LSN onward, on its timeline and every later one, so segments
 * numbered below the oldest kept backup's start segment can go, whatever
 * their timeline. `.history` files are never removed (they are tiny and
 * recovery needs every one). Pure.
 */
export function planRetention(manifests: readonly BackupManifest[], policy: RetentionPolicy): RetentionPlan {
  const completed = manifests.filter((m) => m.status === "completed").sort((a, b) => a.startedAt.localeCompare(b.startedAt));
  const byId = new Map(completed.map((m) => [m.id, m]));
  const chainOf = (manifest: BackupManifest): BackupManifest[] => {
    const chain = [manifest];
    const seen = new Set([manifest.id]);
    let current = manifest;
    while (current.reference && byId.has(current.reference) && !seen.has(current.reference)) {
      current = byId.get(current.reference)!;
      seen.add(current.id);
      chain.push(current);
    }
    return chain;
  };
  const keptIds = new Set<string>();
  const keep = (manifest: BackupManifest): void => {
    for (const link of chainOf(manifest)) keptIds.add(link.id);
  };

  const fulls = completed.filter((m) => m.type === "full");
  const keptFulls = new Set(fulls.slice(Math.max(0, fulls.length - policy.keepFull)).map((m) => m.id));
  for (const manifest of completed) if (keptFulls.has(chainOf(manifest).at(-1)!.id)) keep(manifest);

  if (policy.keepDays !== null) {
    const windowStart = policy.now.getTime() - policy.keepDays * DAY_MS;
    const before = completed.filter((m) => consistentAt(m) <= windowStart);
    const anchor = before.sort((a, b) => consistentAt(a) - consistentAt(b)).at(-1);
    if (!anchor) for (const manifest of completed) keep(manifest);
    else {
      keep(anchor);
      for (const manifest of completed) if (consistentAt(manifest) > windowStart) keep(manifest);
    }
  }

  const kept = completed.filter((m) => keptIds.has(m.id));
  return { expire: completed.filter((m) => !keptIds.has(m.id)).map((m) => m.id), walBefore: oldestStart(kept) };
}

/** When a backup became restorable: its stop (a completed backup has one; older manifests fall back to its finish). */
function consistentAt(manifest: BackupManifest): number {
  return Date.parse(manifest.stoppedAt ?? manifest.finishedAt ?? manifest.startedAt);
}

/**
 * The plan's backups in the groups expiry takes together: each full with
 * the differentials and incrementals that build on it (directly or through
 * one another), newest first, so the dependents are marked expired before
 * the full. Expired one by one, a verification or restore of a dependent
 * that waited on the full's lock would find its chain broken, and a crash
 * between the full and its dependents would leave completed backups with no
 * full under them. Pure.
 */
export function expiryGroups(plan: RetentionPlan, manifests: readonly BackupManifest[]): string[][] {
  const expiring = new Set(plan.expire);
  const byId = new Map(manifests.map((manifest) => [manifest.id, manifest]));
  const rootOf = (id: string): string => {
    let current = id;
    for (;;) {
      const reference = byId.get(current)?.reference;
      if (!reference || !expiring.has(reference) || reference === id) return current;
      current = reference;
    }
  };
  const groups = new Map<string, string[]>();
  for (const id of plan.expire) {
    const root = rootOf(id);
    groups.set(root, [...(groups.get(root) ?? []), id]);
  }
  const startOf = (id: string): string => byId.get(id)?.startedAt ?? "";
  return [...groups.values()].map((ids) => [...ids].sort((a, b) => startOf(b).localeCompare(startOf(a))));
}

/**
 * The WAL bound once some backups the plan expires were skipped (another
 * process held their lock: they stay completed until the next expiry): their
 * WAL is kept with them. Pure.
 */
export function walBeforeSparing(plan: RetentionPlan, spared: readonly BackupManifest[]): number | null {
  const sparedStart = oldestStart(spared);
  if (sparedStart === null) return plan.walBefore;
  return plan.walBefore === null ? null : Math.min(plan.walBefore, sparedStart);
}

function oldestStart(manifests: readonly BackupManifest[]): number | null {
  if (manifests.length === 0) return null;
  return Math.min(...manifests.map((m) => segmentNumber(m.startLsn)));
}

/**
 * The WAL bound of one repository's expiry when several share the spool:
 * never past the oldest segment the spool still holds. The spool keeps
 * what some repository lacks (it is trimmed only behind what every one
 * holds), and the hold slot moves only over segments every repository
 * holds: one that expired here what another has not pushed yet would stop
 * the hold slot and the spool's trim for good (review 25, H1). Pure.
 */
export function walBeforeKeepingSpooled(walBefore: number | null, spooled: readonly string[]): number | null {
  if (walBefore === null) return null;
  const segments = spooled.map((name) => parseSegmentName(name.replace(/\.partial$/, ""))?.segment).filter((n) => n !== undefined);
  return segments.length === 0 ? walBefore : Math.min(walBefore, ...segments);
}
