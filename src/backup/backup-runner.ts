import { ErrorCode, RelevoError } from "../errors";
import type { NodeRef } from "../nodes/node-driver";
import { withNodeClient } from "../postgres/connection";
import { redisCall } from "../redis/redis-client";
import type { LeaseHolder } from "../redis/redis-lease";
import { backupCompletedEvent, backupFailedEvent, backupStartedEvent } from "./backup-events";
import { progressFigures } from "./backup-progress";
import type { BackupServiceDeps } from "./backup-service";
import { chooseBackupSource } from "./backup-source";
import type { BackupManifest, BackupType } from "./manifest";
import { takeBackup } from "./take-backup";
import type { Repository } from "../storage/repository";
import { BackupCopies } from "./backup-copies";
import { backupTargets, type BackupTargets } from "./backup-targets";

/** The backup this instance runs: its id once it has started, and its completion. */
interface RunningBackup {
  id: string | null;
  done: Promise<BackupManifest>;
}

/** One backup run, as its steps see it. */
interface Run {
  readonly type: BackupType;
  readonly slot: RunningBackup;
  readonly source: NodeRef;
  readonly primary: NodeRef;
  readonly startedAtMs: number;
  /** Where the backup is taken, and the repositories it is copied to once completed. */
  readonly targets: BackupTargets;
  /** The repository it is taken into (targets.taken). */
  readonly into: Repository;
  /** The bytes put into the repository as last reported (objects put and later dropped included): the final progress keeps it. */
  bytesStored?: number;
}

/**
 * Runs backups one at a time (a second request while one runs is
 * BACKUP_IN_PROGRESS, in this instance or, by the backup lease, in
 * another), records each state change as an event and its progress, and
 * applies retention after each completed backup. Nothing is read from the
 * tables afterwards: the reference point a restore test compares with is
 * taken by the restore test, on a replica (see referencePointFor).
 */
export class BackupRunner {
  private running: RunningBackup | null = null;
  /** Work started after backups completed (copies, retention), for waitForIdle. */
  private readonly afterwork = new Set<Promise<void>>();
  private readonly copies: BackupCopies;

  constructor(
    private readonly deps: BackupServiceDeps,
    /** Applied after every completed backup. */
    private readonly retention: { expire(): Promise<unknown> },
  ) {
    this.copies = new BackupCopies({ ...deps, walTimeoutMs: deps.archiveTimeoutMs });
  }

  get runningId(): string | null {
    return this.running?.id ?? null;
  }

  /**
   * Starts a backup and resolves once it has started (its id is known);
   * `done` resolves when it has completed (or rejects when it failed):
   * in the repository it is taken into, its copies to the others after.
   * `options.repository` writes it to that repository alone, whatever
   * RELEVO_BACKUP_REPO says (NOT_FOUND when there is none).
   */
  async start(
    type: BackupType,
    options: { readonly repository?: number | null } = {},
  ): Promise<{ manifest: BackupManifest; done: Promise<BackupManifest> }> {
    const targets = backupTargets({
      // Pending ones too: their copies fail (REPOSITORY_UNAVAILABLE) and are retried once they are opened.
      configured: this.deps.repositories.configured,
      choice: this.deps.backupRepository,
      asked: options.repository,
    });
    if (this.running) {
      throw new RelevoError(ErrorCode.BackupInProgress, `backup ${this.running.id ?? "(starting)"} is running; wait for it to finish`);
    }
    const snapshot = this.deps.topology();
    const chosen = chooseBackupSource(snapshot, this.deps.sourcePolicy, this.deps.maxSourceLagBytes);
    const slot: RunningBackup = { id: null, done: Promise.resolve(null as unknown as BackupManifest) };
    this.running = slot; // taken before the first await: one backup per instance
    const stopRenewing = await this.holdLease();
    const end = (): void => {
      stopRenewing();
      void this.deps.lease.release().catch(() => undefined);
      if (this.running === slot) this.running = null;
    };
    const run: Run = {
      type,
      slot,
      source: this.deps.nodes.find((node) => node.name === chosen.node)!,
      primary: this.deps.nodes.find((node) => node.name === snapshot?.primary)!,
      startedAtMs: Date.now(),
      targets,
      into: this.deps.repositories.byIndex(targets.taken).repository,
    };
    let reference: BackupManifest | null;
    try {
      reference = type === "full" ? null : await this.referenceFor(run.into, type);
    } catch (error) {
      end();
      throw error;
    }
    let announce!: (manifest: BackupManifest) => void;
    const started = new Promise<BackupManifest>((resolve) => (announce = resolve));
    slot.done = this.take(run, { reference, announce })
      .then((manifest) => this.completed(run, manifest))
      .catch((error: Error) => this.failed(run, error))
      .finally(end);
    const first = await Promise.race([started, slot.done]);
    slot.done.catch(() => undefined); // the caller may not wait for completion
    return { manifest: first, done: slot.done };
  }

  async waitForIdle(): Promise<void> {
    await this.running?.done.catch(() => undefined);
    await Promise.all(this.afterwork);
  }

  /**
   * The backup lease, held while the backup runs so that one runs at a time
   * across service instances; returns what stops renewing it. Without it the
   * slot this instance took is given back.
   */
  private async holdLease(): Promise<() => void> {
    let lease: LeaseHolder | null;
    try {
      lease = await redisCall("backup lease", () => this.deps.lease.tryAcquire());
    } catch (error) {
      this.running = null;
      throw error;
    }
    if (!lease) {
      this.running = null;
      throw new RelevoError(ErrorCode.BackupInProgress, "a backup is running in another Relevo instance; wait for it to finish");
    }
    return this.deps.lease.keepAlive(this.deps.logger, () => this.deps.logger.error({}, "backup lease lost while a backup runs"));
  }

  /**
   * What a differential (the newest full) or an incremental (the newest
   * backup of any type) builds on, in the repository it is taken into; null
   * when there is none (it is then taken as a full).
   */
  private async referenceFor(repository: Repository, type: "differential" | "incremental"): Promise<BackupManifest | null> {
    const completed = (await repository.listManifests()).filter(
      (manifest) => manifest.status === "completed" && (type === "incremental" || manifest.type === "full"),
    );
    return completed[completed.length - 1] ?? null;
  }

  private take(
    run: Run,
    options: { readonly reference: BackupManifest | null; readonly announce: (manifest: BackupManifest) => void },
  ): Promise<BackupManifest> {
    const { type, slot, source, primary, startedAtMs } = run;
    return takeBackup(
      { ...this.deps, repository: run.into },
      {
        type,
        reference: options.reference,
        copyTo: run.targets.copies,
        source,
        compression: this.deps.compression,
        parallelism: this.deps.parallelism,
        archiveTimeoutMs: this.deps.archiveTimeoutMs,
        switchWalOnPrimary: async () => {
          await withNodeClient(primary, this.deps.superuser, 10000, (client) => client.query("SELECT pg_switch_wal()"));
        },
        onProgress: (progress) => {
          run.bytesStored = progress.bytesStored;
          if (slot.id) this.deps.progress.record(progressFigures(slot.id, progress, startedAtMs, Date.now()));
        },
        onStart: async (manifest) => {
          slot.id = manifest.id;
          await this.deps.events.emit(backupStartedEvent(manifest, { asked: type, source }));
          options.announce(manifest);
        },
      },
    );
  }

  private async completed(run: Run, manifest: BackupManifest): Promise<BackupManifest> {
    this.recordFinalProgress(run, manifest, "completed");
    await this.deps.events.emit(backupCompletedEvent(manifest, run.source));
    // Copies, then retention, after every backup, off the backup's own time (waitForIdle awaits them). The copies come
    // first: retention must not take away a backup a copy still reads (its lock would hold expiry back anyway).
    const { taken, copies } = run.targets;
    this.trackAfterwork(
      this.copies
        .copyAfterBackup(manifest.id, taken, copies)
        .then(() => this.retention.expire())
        .then(() => undefined)
        .catch((error: Error) => this.deps.logger.error({ err: error.message }, "copies or retention after the backup failed")),
    );
    return manifest;
  }

  private async failed(run: Run, error: Error): Promise<never> {
    const manifest = run.slot.id ? await run.into.readManifest(run.slot.id) : null;
    if (manifest) {
      this.recordFinalProgress(run, manifest, "failed");
      await this.deps.events.emit(backupFailedEvent(manifest, { source: run.source, error }));
    }
    throw error;
  }

  private recordFinalProgress(run: Run, manifest: BackupManifest, phase: "completed" | "failed"): void {
    const done = {
      phase: "copying" as const,
      filesDone: manifest.fileCount,
      filesTotal: manifest.fileCount,
      bytesDone: manifest.sizeBytes,
      bytesTotal: manifest.sizeBytes,
      // What was sent, as the updates before said (the manifest counts only the content kept); the manifest's without any.
      bytesStored: run.bytesStored ?? manifest.storedBytes,
    };
    this.deps.progress.record(
      { ...progressFigures(manifest.id, done, run.startedAtMs, Date.now()), phase, etaSeconds: null },
      { final: true },
    );
  }

  private trackAfterwork(work: Promise<void>): void {
    this.afterwork.add(work);
    void work.finally(() => this.afterwork.delete(work));
  }
}
