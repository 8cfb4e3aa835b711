import { lsnToNumber } from "../postgres/lsn";
import { ErrorCode, RelevoError } from "../errors";
import { assertBackupId, type BackupManifest } from "../backup/manifest";
import type { RecoveryTarget } from "./recovery-target";
import { lsnWithin, recoveryWindow, type ArchivedWalState } from "./recovery-window";
import type { Repository } from "../storage/repository";
import type { RepositorySet } from "../storage/repository-set";
import { restoreOrder, unionHoldings, type RepositoryHoldings, type RestoreOrder } from "./repository-order";
import type { WalSummarizer } from "../wal/wal-summary";
import type { RestorePointRecord } from "../wal/waldump-summary";

/**
 * The backup a restore starts from: the one named, or the newest completed
 * one that ends before the target (for a named restore point: before the
 * first point of that name its recovery would meet; when the archive's
 * summaries know no point of that name, the newest). A time or LSN target outside the
 * recoverable window is refused, naming the window. Pure; the service and
 * the CLI's `relevo restore` both use it.
 */
export function chooseBackup(
  manifests: readonly BackupManifest[],
  archived: ArchivedWalState,
  backupId: string | undefined,
  target: RecoveryTarget,
  restorePoints: readonly RestorePointRecord[] = [],
): BackupManifest {
  const window = recoveryWindow(manifests, archived);
  const describe = (): string =>
    window.earliest && window.latest
      ? `the recoverable window is ${window.earliest.time} (${window.earliest.lsn}) to ${window.latest.time} (${window.latest.lsn})`
      : "nothing is recoverable yet: no completed backup";
  if (target.kind === "time") {
    const at = Date.parse(target.time);
    if (!window.earliest || !window.latest || at < Date.parse(window.earliest.time) || at > Date.parse(window.latest.time)) {
      throw new RelevoError(ErrorCode.PreconditionFailed, `cannot restore to ${target.time}: ${describe()}`, { details: { window } });
    }
  }
  if (target.kind === "lsn" && !lsnWithin(window, target.lsn)) {
    throw new RelevoError(ErrorCode.PreconditionFailed, `cannot restore to LSN ${target.lsn}: ${describe()}`, { details: { window } });
  }
  if (backupId) {
    const named = manifests.find((manifest) => manifest.id === backupId);
    if (!named) throw new RelevoError(ErrorCode.NotFound, `no backup with id ${backupId}`);
    return named;
  }
  const usable = manifests
    .filter((manifest) => manifest.status === "completed")
    .filter((manifest) => {
      if (target.kind === "time") return Date.parse(manifest.stoppedAt!) <= Date.parse(target.time);
      if (target.kind === "lsn") return lsnToNumber(manifest.stopLsn!) <= lsnToNumber(target.lsn);
      if (target.kind === "name") return reachesRestorePoint(manifest, target.name, restorePoints);
      return true;
    });
  const chosen = usable[usable.length - 1];
  if (!chosen) throw new RelevoError(ErrorCode.PreconditionFailed, `no completed backup ends before the target: ${describe()}`);
  return chosen;
}

/**
 * Recovery from a backup stops at the first restore point of the name after
 * the backup's start; one before the backup is consistent (its stop) fails.
 */
function reachesRestorePoint(manifest: BackupManifest, name: string, restorePoints: readonly RestorePointRecord[]): boolean {
  const named = restorePoints.filter((point) => point.name === name);
  if (named.length === 0) return true;
  const first = named.find((point) => lsnToNumber(point.lsn) >= lsnToNumber(manifest.startLsn));
  return first !== undefined && lsnToNumber(first.lsn) >= lsnToNumber(manifest.stopLsn!);
}

/** chooseBackup over a repository: its manifests, its archive and, for a named target, the restore points its summaries know. */
export async function chooseBackupIn(
  repository: Repository,
  summarizer: WalSummarizer,
  backupId: string | undefined,
  target: RecoveryTarget,
): Promise<BackupManifest> {
  if (backupId) assertBackupId(backupId); // BAD_USER_INPUT, whatever the target
  const restorePoints = target.kind === "name" && !backupId ? await summarizer.restorePoints() : [];
  const archive = await repository.archivedWalState();
  return chooseBackup(
    await repository.listManifests(),
    target.kind === "time" ? await withNewestTransactionEnd(archive, summarizer) : archive,
    backupId,
    target,
    restorePoints,
  );
}

/**
 * chooseBackup over every repository of a set: the backup is chosen from
 * what some repository holds (see unionHoldings: a restore reads the backup
 * from one and each WAL segment from whichever holds it), and with it the
 * order its repositories are tried in (see restoreOrder). A repository that
 * cannot be listed holds nothing here: the others still restore.
 */
export async function chooseBackupAcross(
  repositories: RepositorySet,
  summarizer: WalSummarizer,
  backupId: string | undefined,
  target: RecoveryTarget,
): Promise<{ readonly manifest: BackupManifest; readonly plan: RestoreOrder }> {
  if (backupId) assertBackupId(backupId); // BAD_USER_INPUT, whatever the target
  const holdings = await repositoryHoldings(repositories);
  // None could be read: the first one's error, as a restore from one repository always reported it.
  if (holdings.every((holding) => holding.error !== undefined)) throw holdings[0]!.error;
  const union = unionHoldings(holdings);
  const restorePoints = target.kind === "name" && !backupId ? await summarizer.restorePoints() : [];
  const manifest = chooseBackup(
    union.manifests,
    target.kind === "time" ? await withNewestTransactionEnd(union.archive, summarizer) : union.archive,
    backupId,
    target,
    restorePoints,
  );
  return { manifest, plan: restoreOrder(holdings, manifest.id, target) };
}

/** What each repository of the set holds: its manifests and its archive (a failure to list them recorded, not thrown). */
export async function repositoryHoldings(repositories: RepositorySet): Promise<Array<RepositoryHoldings & { readonly error?: unknown }>> {
  return Promise.all(
    repositories.members.map(async ({ index, repository }) => {
      try {
        return { index, manifests: await repository.listManifests(), archive: await repository.archivedWalState() };
      } catch (error) {
        return { index, manifests: [], archive: { segments: [], reachedAt: null }, unreadable: (error as Error).message, error };
      }
    }),
  );
}

/**
 * The archive's state with the last transaction end of its newest segment,
 * read now when no summary has it yet (a segment is summarised once its
 * last record is readable, so the newest often is not): a time target just
 * before the archive's end must not be refused for want of a summary.
 * Every commit pg_waldump read is in the archived WAL, whole or not.
 */
async function withNewestTransactionEnd(archive: ArchivedWalState, summarizer: WalSummarizer): Promise<ArchivedWalState> {
  const newest = [...archive.segments].sort((a, b) => b.segment - a.segment || b.timeline - a.timeline)[0];
  if (!newest) return archive;
  const at = (await summarizer.summaryOf(newest.timeline, newest.segment)).lastTransactionEndAt ?? null;
  return at !== null && (archive.reachedAt === null || at > archive.reachedAt) ? { ...archive, reachedAt: at } : archive;
}
