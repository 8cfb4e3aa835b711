import type { BackupManifest } from "./manifest";
import { segmentNumber } from "../postgres/wal-names";

export interface RetentionPlan {
  /** Backups to mark expired (their content removed, the manifest kept as a record). */
  readonly expire: readonly string[];
  /** WAL segments numbered below this are needed by no kept backup (null: keep all). */
  readonly walBefore: number | null;
}

/**
 * Which backups and WAL to let go, keeping the newest `keepFull` completed
 * full backups and everything that depends on them (a differential or
 * incremental is kept with the full it builds on). Pure.
 *
 * WAL: a backup needs the archive from its own start (redo) LSN onward, on
 * its timeline and every later one, so segments numbered below the oldest
 * kept backup's start segment can go, whatever their timeline. `.history`
 * files are never removed (they are tiny and recovery needs every one).
 */
export function planRetention(manifests: readonly BackupManifest[], keepFull: number): RetentionPlan {
  const completed = manifests.filter((m) => m.status === "completed").sort((a, b) => a.startedAt.localeCompare(b.startedAt));
  const fulls = completed.filter((m) => m.type === "full");
  if (fulls.length <= keepFull) return { expire: [], walBefore: oldestStart(completed) };
  const keptFulls = new Set(fulls.slice(fulls.length - keepFull).map((m) => m.id));
  const byId = new Map(completed.map((m) => [m.id, m]));
  const rootOf = (manifest: BackupManifest): string => {
    let current = manifest;
    while (current.reference && byId.has(current.reference)) current = byId.get(current.reference)!;
    return current.id;
  };
  const kept = completed.filter((m) => keptFulls.has(rootOf(m)));
  const keptIds = new Set(kept.map((m) => m.id));
  return { expire: completed.filter((m) => !keptIds.has(m.id)).map((m) => m.id), walBefore: oldestStart(kept) };
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
