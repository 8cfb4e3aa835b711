import type { BackupManifest } from "../backup/manifest";
import { lsnToNumber } from "../postgres/lsn";
import { parseSegmentName, segmentNumber } from "../postgres/wal-names";
import type { RecoveryTarget } from "./recovery-target";
import { recoveryWindow, type ArchivedWalState } from "./recovery-window";

/** What one repository holds, as the restore order is decided from it: its manifests (its copy of each backup) and its archive. */
export interface RepositoryHoldings {
  readonly index: number;
  readonly manifests: readonly BackupManifest[];
  readonly archive: ArchivedWalState;
  /** Why its manifests or archive could not be listed (then it holds nothing here); absent when they were. */
  readonly unreadable?: string;
}

/** Why a repository is not tried, or is tried after the others. */
export type RepositoryStanding =
  | { readonly index: number; readonly phase: "complete"; readonly archiveCovers: true }
  | { readonly index: number; readonly phase: "complete"; readonly archiveCovers: false; readonly why: string }
  | { readonly index: number; readonly phase: "unusable"; readonly why: string };

export interface RestoreOrder {
  /** The repositories to restore the backup from, in the order they are tried. */
  readonly order: readonly number[];
  /** Every repository's standing, lowest number first (what a log or an error reports). */
  readonly standings: readonly RepositoryStanding[];
}

/**
 * Which repositories a restore of `backupId` tries, in what order. Pure.
 * A repository is tried only when its copy of the backup and of every
 * backup it builds on is completed (a copy still being written, failed or
 * absent holds nothing to restore). Among those, the ones whose own
 * archive covers the target come first, lowest number first; the others
 * follow, since the WAL fed to the copy falls back per segment to every
 * repository (see repositoriesWalSource): their backup copy is still good.
 */
export function restoreOrder(holdings: readonly RepositoryHoldings[], backupId: string, target: RecoveryTarget): RestoreOrder {
  const standings = [...holdings].sort((a, b) => a.index - b.index).map((holding) => standingOf(holding, backupId, target));
  const complete = standings.filter((standing) => standing.phase === "complete");
  const order = [...complete.filter((standing) => standing.archiveCovers), ...complete.filter((standing) => !standing.archiveCovers)].map(
    (standing) => standing.index,
  );
  return { order, standings };
}

function standingOf(holding: RepositoryHoldings, backupId: string, target: RecoveryTarget): RepositoryStanding {
  if (holding.unreadable !== undefined)
    return { index: holding.index, phase: "unusable", why: `it could not be read: ${holding.unreadable}` };
  const byId = new Map(holding.manifests.map((manifest) => [manifest.id, manifest] as const));
  const backup = byId.get(backupId);
  if (!backup) return { index: holding.index, phase: "unusable", why: `it holds no copy of backup ${backupId}` };
  let link: BackupManifest | undefined = backup;
  const seen = new Set<string>();
  while (link) {
    if (link.status !== "completed") {
      const which = link.id === backupId ? `its copy of backup ${backupId}` : `its copy of backup ${link.id}, which ${backupId} builds on,`;
      return { index: holding.index, phase: "unusable", why: `${which} is ${link.status}` };
    }
    if (seen.has(link.id)) return { index: holding.index, phase: "unusable", why: `the chain of backup ${backupId} loops at ${link.id}` };
    seen.add(link.id);
    if (!link.reference) break;
    const reference = byId.get(link.reference);
    if (!reference) {
      return {
        index: holding.index,
        phase: "unusable",
        why: `it holds no copy of backup ${link.reference}, which ${backupId} builds on`,
      };
    }
    link = reference;
  }
  const uncovered = archiveShortfall(holding, backup, target);
  return uncovered === null
    ? { index: holding.index, phase: "complete", archiveCovers: true }
    : { index: holding.index, phase: "complete", archiveCovers: false, why: uncovered };
}

/**
 * Why this repository's archive alone does not carry recovery from the
 * backup to the target (null when it does): a segment missing between the
 * backup's start and the target's, or an archive that ends before the
 * target (a time target: before it; any other: before the backup's end,
 * where recovery becomes consistent).
 */
function archiveShortfall(holding: RepositoryHoldings, backup: BackupManifest, target: RecoveryTarget): string | null {
  const window = recoveryWindow(holding.manifests, holding.archive);
  if (!window.latest) return "its archive holds no WAL after its oldest backup";
  const endLsn = target.kind === "lsn" ? lsnToNumber(target.lsn) : lsnToNumber(backup.stopLsn ?? backup.startLsn);
  if (lsnToNumber(window.latest.lsn) < endLsn) return `its archive ends at ${window.latest.lsn}`;
  if (target.kind === "time" && Date.parse(window.latest.time) < Date.parse(target.time))
    return `its archive ends at ${window.latest.time}`;
  const from = segmentNumber(backup.startLsn);
  const to = target.kind === "lsn" ? segmentNumber(target.lsn) : Number.POSITIVE_INFINITY;
  const gap = window.gaps.find((candidate) => {
    const first = segmentNumberOfName(candidate.from);
    const last = segmentNumberOfName(candidate.to);
    return last >= from && first <= to && candidate.timeline >= backup.timeline;
  });
  return gap ? `its archive misses ${gap.from}${gap.to === gap.from ? "" : ` to ${gap.to}`}` : null;
}

function segmentNumberOfName(name: string): number {
  return parseSegmentName(name)!.segment;
}

/**
 * What some repository holds, as one: every backup (a completed copy
 * anywhere outranks an unfinished one elsewhere), every archived segment,
 * the latest transaction end any archive reached. What a restore can reach
 * at all, since it reads the backup from one repository and each WAL
 * segment from whichever holds it.
 */
export function unionHoldings(holdings: readonly RepositoryHoldings[]): { manifests: BackupManifest[]; archive: ArchivedWalState } {
  const manifests = new Map<string, BackupManifest>();
  for (const holding of [...holdings].sort((a, b) => a.index - b.index)) {
    for (const manifest of holding.manifests) {
      const known = manifests.get(manifest.id);
      if (!known || (known.status !== "completed" && manifest.status === "completed")) manifests.set(manifest.id, manifest);
    }
  }
  const segments = new Map<string, { timeline: number; segment: number }>();
  let reachedAt: string | null = null;
  for (const { archive } of holdings) {
    for (const segment of archive.segments) segments.set(`${segment.timeline}/${segment.segment}`, segment);
    if (archive.reachedAt !== null && (reachedAt === null || archive.reachedAt > reachedAt)) reachedAt = archive.reachedAt;
  }
  return {
    manifests: [...manifests.values()].sort((a, b) => a.startedAt.localeCompare(b.startedAt) || a.id.localeCompare(b.id)),
    archive: { segments: [...segments.values()], reachedAt },
  };
}
