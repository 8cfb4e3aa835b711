import type { Credentials } from "../postgres/connection";
import { removeBackupRemains, unfinishedRemovals } from "../storage/backup-content";
import { ErrorCode, RelevoError, isRelevoError } from "../errors";
import type { EventLog } from "../events/event-log";
import type { Logger } from "../log";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import { backupChain } from "./backup-chain";
import { backupCatalogedEvent, backupExpiredEvent, backupExpiryHeldBackEvent, backupVerifiedEvent } from "./backup-events";
import { heldBackTooLong } from "./backup-lock";
import { BackupRunner } from "./backup-runner";
import { assertBackupId, type BackupManifest, type BackupType, type Compression, type ManifestSummary } from "./manifest";
import type { RecoveryTarget } from "../restore/recovery-target";
import type { Repository } from "../storage/repository";
import type { NumberedRepository, RepositorySet } from "../storage/repository-set";
import { catalogManifest, type BackupRepositoryChoice } from "./backup-targets";
import { BackupCopies, type BackupCopyState } from "./backup-copies";
import { restoreFromRepositories, type RestoredFromRepository } from "../restore/restore-from-repositories";
import { restoreRepositoryFailedEvent } from "../restore/restore-events";
import { verifyBackup } from "./verify";
import type { BackupProgress, BackupProgressRecorder } from "./backup-progress";
import type { BackupSourcePolicy } from "./backup-source";
import type { ClusterSnapshot } from "../cluster/topology";
import { expiryGroups, planRetention, walBeforeKeepingSpooled, walBeforeSparing, type RetentionPolicy } from "./retention";
import { recoveryWindow, type RecoveryWindow } from "../restore/recovery-window";
import { chooseBackupAcross, repositoryHoldings } from "../restore/choose-backup";
import { unionHoldings } from "../restore/repository-order";
import type { WalArchiver } from "../wal/wal-archiver";
import type { WalSummarizer } from "../wal/wal-summary";
import type { RedisLease } from "../redis/redis-lease";
import type { FailoverEligibility } from "./reference-source";
import type { PauseMarker } from "./reference-point";

export interface BackupServiceDeps {
  readonly clusterName: string;
  readonly maxSlotWalKeepSize: string;
  readonly driver: NodeDriver;
  /** Every configured repository: a backup is written to one or to all (see backupTargets), each expired by its own rule. */
  readonly repositories: RepositorySet;
  /**
   * The lowest-numbered repository (repositories.first): restores and
   * verifications read it (a restore across repositories is restore's own).
   */
  readonly repository: Repository;
  /** RELEVO_BACKUP_REPO: where a backup goes when createBackup names no repository. */
  readonly backupRepository: BackupRepositoryChoice;
  readonly archiver: WalArchiver;
  readonly summarizer: WalSummarizer;
  readonly superuser: Credentials;
  readonly events: EventLog;
  readonly logger: Logger;
  readonly compression: Compression;
  readonly parallelism: number;
  readonly archiveTimeoutMs: number;
  readonly startTimeoutMs: number;
  /** What expiry keeps in each repository (its count and time rules; `now` is taken at each expiry). */
  readonly retention: (repository: NumberedRepository) => Omit<RetentionPolicy, "now">;
  /** Address scratch nodes (restore tests) listen on. */
  readonly host: string;
  /** The latest topology, to choose the node a backup is copied from. */
  readonly topology: () => ClusterSnapshot | null;
  readonly nodes: readonly NodeRef[];
  readonly sourcePolicy: BackupSourcePolicy;
  readonly maxSourceLagBytes: number;
  readonly progress: BackupProgressRecorder;
  /** Held while a backup runs, so that one runs at a time across service instances. */
  readonly lease: RedisLease;
  /** Which replicas a failover would promote now: a restore test never pauses the only one (see chooseReferenceReplica). */
  readonly failoverEligibility: () => Promise<FailoverEligibility>;
  /** Marks a replica while a restore test's reference point holds its replay paused. */
  readonly pauseMarker: PauseMarker;
}

/**
 * Backups as the API, the scheduler and the CLI see them: runs (one at a
 * time, see BackupRunner), the catalog the repository holds, retention,
 * restores and verification.
 */
export class BackupService {
  private readonly runner: BackupRunner;
  private readonly copies: BackupCopies;
  /** Verifications under way, for waitForIdle: a restore test's scratch node is removed before the service stops. */
  private readonly verifications = new Set<Promise<unknown>>();

  constructor(private readonly deps: BackupServiceDeps) {
    this.runner = new BackupRunner(deps, { expire: () => this.expire() });
    this.copies = new BackupCopies({ ...deps, walTimeoutMs: deps.archiveTimeoutMs });
  }

  get runningId(): string | null {
    return this.runner.runningId;
  }

  /**
   * Starts a backup and resolves once it has started (its id is known);
   * `done` resolves when it has completed (or rejects when it failed).
   */
  async start(
    type: BackupType,
    options: { readonly repository?: number | null } = {},
  ): Promise<{ manifest: BackupManifest; done: Promise<BackupManifest> }> {
    return this.runner.start(type, options);
  }

  /** Live progress of a backup (kept a day after it ended); null when none is known. */
  async progress(id: string): Promise<BackupProgress | null> {
    assertBackupId(id);
    return this.deps.progress.read(id);
  }

  /** The backups a restore of `manifest` reads, the full first (see backupChain), in the first repository holding it completed. */
  async chain(manifest: BackupManifest): Promise<BackupManifest[]> {
    return backupChain(await this.holderOf(manifest.id), manifest);
  }

  async list(): Promise<BackupManifest[]> {
    return this.deps.repository.listManifests();
  }

  /** Every backup of every repository, oldest first, without file lists (see listCatalog). */
  async listSummaries(): Promise<ManifestSummary[]> {
    return (await this.listCatalog()).map((entry) => entry.summary);
  }

  /**
   * Every backup any repository holds, oldest first, without file lists,
   * with its copies: each as the first repository holding it completed
   * says (else the first holding it: see catalogManifest). A listing of
   * manifests per repository, each summary parsed once per version (see
   * listManifestSummaries).
   */
  async listCatalog(): Promise<Array<{ summary: ManifestSummary; copies: BackupCopyState[] }>> {
    const byRepository = await this.copies.summariesByRepository();
    const readable = this.deps.repositories.members.flatMap((member) => {
      const listed = byRepository.get(member.index);
      return listed instanceof Error || !listed ? [] : [listed];
    });
    // No repository readable: the failure, never an empty catalog.
    if (readable.length === 0) throw byRepository.get(this.deps.repositories.first.index) as Error;
    const ids = [...new Set(readable.flatMap((summaries) => [...summaries.keys()]))].sort();
    return Promise.all(
      ids.map(async (id) => ({
        summary: catalogManifest(readable.map((summaries) => summaries.get(id) ?? null))!,
        copies: await this.copies.copiesOf(id, byRepository),
      })),
    );
  }

  /** Backup `id` as the catalog shows it (see listCatalog); NOT_FOUND when no repository holds it. */
  async get(id: string): Promise<BackupManifest> {
    assertBackupId(id);
    const read = await Promise.all(
      this.deps.repositories.members.map((member) => member.repository.readManifest(id).catch((error: Error) => error)),
    );
    const manifest = catalogManifest(read.map((each) => (each instanceof Error ? null : each)));
    if (manifest) return manifest;
    // Not found where it could be looked for: a repository that could not be read may hold it.
    const failure = read.find((each): each is Error => each instanceof Error);
    if (failure) throw failure;
    throw new RelevoError(ErrorCode.NotFound, `no backup with id ${id}`);
  }

  /** The lowest-numbered repository holding backup `id` completed; the first repository when none does (its own error then). */
  private async holderOf(id: string): Promise<Repository> {
    for (const member of this.deps.repositories.members) {
      const there = await member.repository.readManifest(id).catch(() => null);
      if (there?.status === "completed") return member.repository;
    }
    return this.deps.repository;
  }

  /** Backup `id`'s copy in each repository, lowest number first. */
  async copiesOf(id: string): Promise<BackupCopyState[]> {
    assertBackupId(id);
    return this.copies.copiesOf(id);
  }

  /** The newest completed backup, for restores that name none. */
  async latestCompleted(): Promise<BackupManifest> {
    // Over every repository: a backup written to repository 2 alone (--repo 2) is the newest too.
    const completed = (await this.listSummaries()).filter((summary) => summary.status === "completed");
    const latest = completed[completed.length - 1];
    if (!latest) throw new RelevoError(ErrorCode.PreconditionFailed, "no completed backup in the repository");
    return this.get(latest.id);
  }

  /**
   * The recoverable window of repository `repository` (its backups, its
   * archive and its gaps), or by default of the repositories together:
   * what some repository can restore, since a restore reads the backup
   * from one and each WAL segment from whichever holds it (see
   * unionHoldings). One that cannot be read then counts for nothing,
   * unless none can.
   */
  async recoveryWindow(options: { readonly repository?: number } = {}): Promise<RecoveryWindow> {
    if (options.repository !== undefined) {
      const { repository } = this.deps.repositories.byIndex(options.repository);
      return recoveryWindow(await repository.listManifests(), await repository.archivedWalState());
    }
    const holdings = await repositoryHoldings(this.deps.repositories);
    if (holdings.every((holding) => holding.error !== undefined)) throw holdings[0]!.error;
    const union = unionHoldings(holdings);
    return recoveryWindow(union.manifests, union.archive);
  }

  /**
   * Expires what retention lets go, in each repository by its own rule
   * (RELEVO_REPO<n>_RETENTION_FULL / _DAYS): older full backups with their
   * dependents (manifest kept, status expired, content and data key
   * removed: see removeBackupRemains) and the WAL no kept backup there
   * needs, in that repository only; and completes the removals an
   * interrupted expiry or failure left. `expired`: the backups expired in
   * any repository.
   */
  async expire(): Promise<{ expired: string[]; walSegmentsRemoved: number }> {
    const expired = new Set<string>();
    let walSegmentsRemoved = 0;
    const failures: Error[] = [];
    // Each repository whatever another's outcome: one that is down does not keep the others' retention from running.
    for (const member of this.deps.repositories.members) {
      try {
        const result = await this.expireIn(member);
        for (const id of result.expired) expired.add(id);
        walSegmentsRemoved += result.walSegmentsRemoved;
      } catch (error) {
        failures.push(error as Error);
      }
    }
    if (failures.length > 0) throw failures[0]!;
    return { expired: [...expired].sort(), walSegmentsRemoved };
  }

  private async expireIn(member: NumberedRepository): Promise<{ expired: string[]; walSegmentsRemoved: number }> {
    const { repository } = member;
    const manifests = await repository.listManifests();
    const plan = planRetention(manifests, { ...this.deps.retention(member), now: new Date() });
    const expired: string[] = [];
    const skipped: BackupManifest[] = [];
    const read = async (id: string): Promise<BackupManifest> => {
      const manifest = await repository.readManifest(id);
      if (!manifest) throw new RelevoError(ErrorCode.NotFound, `no backup with id ${id} in ${repository.location}`);
      return manifest;
    };
    for (const group of expiryGroups(plan, manifests)) {
      // A full and its dependents under their locks, taken together and tried once: a group any of whose backups a
      // verification, restore or copy holds (up to half an hour for a restore test) is left completed, with its WAL,
      // and expired by the next expiry; never waited for. A dead holder's lock is broken by a later expiry (the lock
      // code remembers it untouched across runs); a live holder stuck on it for longer than any verification may run
      // is reported.
      const full = group[group.length - 1]!;
      const held = await repository.lockBackups(group, { purpose: "expiry", waitMs: 0 }).catch(async (error: unknown) => {
        if (!(isRelevoError(error) && error.code === ErrorCode.LockHeld)) throw error;
        this.deps.logger.info(
          { backupIds: group, repository: member.index, details: error.details },
          `backup ${full} and its dependents are not expired in repository ${member.index} this time: ${error.message}`,
        );
        await this.reportHeldBack(full, error.details);
        for (const id of group) skipped.push(await read(id));
        return null;
      });
      if (held === null) continue;
      try {
        // Newest first: no completed backup is ever left building on an expired one, even by a crash in between.
        for (const id of group) {
          const manifest = await read(id);
          if (manifest.status !== "completed") continue; // expired by another instance meanwhile
          const record = await removeBackupRemains(repository, { ...manifest, status: "expired" });
          // The catalog's record (table backups) says expired once no repository holds the backup completed.
          if ((await this.get(id)).status !== "completed") await this.deps.events.emit(backupExpiredEvent(record));
          else this.deps.logger.info({ backupId: id, repository: member.index }, `backup ${id} expired in repository ${member.index}`);
          expired.push(id);
        }
      } finally {
        await held.release();
      }
    }
    // Removals an earlier expiry, a failing backup or a failed copy began and did not finish (their records still name a data key).
    for (const manifest of unfinishedRemovals(manifests)) {
      if (!expired.includes(manifest.id)) await removeBackupRemains(repository, manifest);
    }
    // This repository's archive only: the spool is every repository's, trimmed by its own rule when there are several,
    // and what it still holds is kept here too (another repository may lack it: see walBeforeKeepingSpooled).
    const spool = this.deps.repositories.configured.length === 1;
    const walBefore = spool
      ? walBeforeSparing(plan, skipped)
      : walBeforeKeepingSpooled(walBeforeSparing(plan, skipped), await repository.spool.names());
    const walSegmentsRemoved = walBefore === null ? 0 : await repository.removeSegmentsBefore(walBefore, { spool });
    return { expired, walSegmentsRemoved };
  }

  private async reportHeldBack(id: string, details: Record<string, unknown> | undefined): Promise<void> {
    const holder = details?.["holder"] as { purpose: string; host: string; pid: number; since: string } | undefined;
    if (!holder || !heldBackTooLong(holder.since, Date.now())) return;
    const event = backupExpiryHeldBackEvent(id, holder, Date.now() - Date.parse(holder.since));
    this.deps.logger.warn({ backupId: id, holder }, event.message);
    await this.deps.events.emit(event);
  }

  /** Restores into a new copy from the first repository whose copy of the backup restores (see restoreFromRepositories). */
  async restore(options: { backupId?: string; target: NodeRef; recoveryTarget: RecoveryTarget }): Promise<RestoredFromRepository> {
    const { repositories } = this.deps;
    const { manifest, plan } = await chooseBackupAcross(repositories, this.deps.summarizer, options.backupId, options.recoveryTarget);
    return restoreFromRepositories(
      { ...this.deps, onFallback: async (fallback) => void (await this.deps.events.emit(restoreRepositoryFailedEvent(fallback))) },
      {
        backupId: manifest.id,
        plan,
        target: options.target,
        members: this.deps.nodes,
        recoveryTarget: options.recoveryTarget,
        parallelism: this.deps.parallelism,
        startTimeoutMs: this.deps.startTimeoutMs,
      },
    );
  }

  async verify(id: string, options: { restoreTest: boolean }): Promise<BackupManifest> {
    assertBackupId(id);
    const running = this.verifyAndReport(id, options);
    const settled = running.catch(() => undefined);
    this.verifications.add(settled);
    void settled.finally(() => this.verifications.delete(settled));
    return running;
  }

  private async verifyAndReport(id: string, options: { restoreTest: boolean }): Promise<BackupManifest> {
    // In the first repository holding it completed (a backup written to repository 2 alone is verified there).
    const verification = await verifyBackup({ ...this.deps, repository: await this.holderOf(id), host: this.deps.host }, id, options);
    await this.deps.events.emit(backupVerifiedEvent(id, verification));
    return this.get(id);
  }

  /**
   * Rebuilds the catalog from the repository, its source of truth: every
   * manifest becomes a `backup:cataloged` event, which the consolidator
   * upserts into table backups like any backup event.
   */
  async rescan(): Promise<number> {
    const manifests = await this.list();
    for (const manifest of manifests) await this.deps.events.emit(backupCatalogedEvent(manifest));
    return manifests.length;
  }

  /**
   * Waits for the running backup, what follows a completed one (retention),
   * and every verification under way: stopped before a restore test ends,
   * its scratch node (a detached postmaster, a container) would outlive the
   * service, and the test, cut off by the shutdown, would record a false
   * "not restorable".
   */
  async waitForIdle(): Promise<void> {
    await this.runner.waitForIdle();
    await Promise.all(this.verifications);
  }
}
