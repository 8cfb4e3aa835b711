import type { Credentials } from "../postgres/connection";
import { ErrorCode, RelevoError } from "../errors";
import { redisCall } from "../redis/redis-client";
import type { EventLog } from "../events/event-log";
import type { BackupRecord } from "../events/event-map";
import type { Logger } from "../log";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import { backupChain } from "./backup-chain";
import { takeBackup } from "./take-backup";
import type { BackupManifest, BackupType, Compression } from "./manifest";
import type { RecoveryTarget } from "../restore/recovery-target";
import type { Repository } from "../storage/repository";
import { restoreBackup } from "../restore/restore";
import { verifyBackup } from "./verify";
import { progressFigures, type BackupProgress, type BackupProgressRecorder } from "./backup-progress";
import { chooseBackupSource, type BackupSourcePolicy } from "./backup-source";
import type { ClusterSnapshot } from "../cluster/topology";
import { withNodeClient } from "../postgres/connection";
import { planRetention } from "./retention";
import { recoveryWindow, type RecoveryWindow } from "../restore/recovery-window";
import { chooseBackupIn } from "../restore/choose-backup";
import { captureReferencePoint } from "./reference-point";
import type { WalArchiver } from "../wal/wal-archiver";
import type { WalSummarizer } from "../wal/wal-summary";
import type { LeaseHolder, RedisLease } from "../redis/redis-lease";

/** Writers wait at most this long for the reference point's table locks. */
const REFERENCE_LOCK_TIMEOUT_MS = 5000;

export interface BackupServiceDeps {
  readonly clusterName: string;
  readonly maxSlotWalKeepSize: string;
  readonly driver: NodeDriver;
  readonly repository: Repository;
  readonly archiver: WalArchiver;
  readonly summarizer: WalSummarizer;
  readonly superuser: Credentials;
  readonly events: EventLog;
  readonly logger: Logger;
  readonly compression: Compression;
  readonly parallelism: number;
  readonly archiveTimeoutMs: number;
  readonly startTimeoutMs: number;
  readonly retentionFull: number;
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
}

/**
 * Runs backups one at a time (a second request while one runs is
 * BACKUP_IN_PROGRESS), records each state change as an event, and restores.
 */
export class BackupService {
  private running: { id: string | null; done: Promise<BackupManifest> } | null = null;
  /** Reference points being taken, by backup id, for verify to wait on (see trackReferencePoint). */
  private readonly referencing = new Map<string, Promise<void>>();
  /** Work started after backups completed (reference points, retention), for waitForIdle. */
  private readonly afterwork = new Set<Promise<void>>();

  constructor(private readonly deps: BackupServiceDeps) {}

  get runningId(): string | null {
    return this.running?.id ?? null;
  }

  /**
   * Starts a backup and resolves once it has started (its id is known);
   * `done` resolves when it has completed (or rejects when it failed).
   */
  async start(type: BackupType): Promise<{ manifest: BackupManifest; done: Promise<BackupManifest> }> {
    if (this.running) {
      throw new RelevoError(ErrorCode.BackupInProgress, `backup ${this.running.id ?? "(starting)"} is running; wait for it to finish`);
    }
    const snapshot = this.deps.topology();
    const chosen = chooseBackupSource(snapshot, this.deps.sourcePolicy, this.deps.maxSourceLagBytes);
    const slot: { id: string | null; done: Promise<BackupManifest> } = {
      id: null,
      done: Promise.resolve(null as unknown as BackupManifest),
    };
    this.running = slot; // taken before the first await: one backup per instance
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
    const stopRenewing = this.deps.lease.keepAlive(this.deps.logger, () =>
      this.deps.logger.error({}, "backup lease lost while a backup runs"),
    );
    const source = this.deps.nodes.find((node) => node.name === chosen.node)!;
    const primary = this.deps.nodes.find((node) => node.name === snapshot?.primary)!;
    let announce!: (manifest: BackupManifest) => void;
    const started = new Promise<BackupManifest>((resolve) => (announce = resolve));
    const { events } = this.deps;
    const startedAtMs = Date.now();
    const finalProgress = (manifest: BackupManifest, phase: "completed" | "failed"): void => {
      const done = {
        phase: "copying" as const,
        filesDone: manifest.fileCount,
        filesTotal: manifest.fileCount,
        bytesDone: manifest.sizeBytes,
        bytesTotal: manifest.sizeBytes,
      };
      this.deps.progress.record(
        { ...progressFigures(manifest.id, done, startedAtMs, Date.now()), phase, etaSeconds: null },
        { final: true },
      );
    };
    let reference: BackupManifest | null;
    try {
      reference = type === "full" ? null : await this.referenceFor(type);
    } catch (error) {
      stopRenewing();
      void this.deps.lease.release().catch(() => undefined);
      this.running = null;
      throw error;
    }
    slot.done = takeBackup(this.deps, {
      type,
      reference,
      source,
      compression: this.deps.compression,
      parallelism: this.deps.parallelism,
      archiveTimeoutMs: this.deps.archiveTimeoutMs,
      switchWalOnPrimary: async () => {
        await withNodeClient(primary, this.deps.superuser, 10000, (client) => client.query("SELECT pg_switch_wal()"));
      },
      onProgress: (progress) => {
        if (slot.id) this.deps.progress.record(progressFigures(slot.id, progress, startedAtMs, Date.now()));
      },
      onStart: async (manifest) => {
        slot.id = manifest.id;
        await events.emit({
          kind: "backup:started",
          severity: "info",
          node: source.name,
          message: `backup ${manifest.id} (${type}) started from ${source.name}`,
          data: backupRecord(manifest),
        });
        announce(manifest);
      },
    })
      .then(async (manifest) => {
        finalProgress(manifest, "completed");
        this.trackReferencePoint(manifest.id, primary);
        const durationMs = Date.parse(manifest.finishedAt!) - Date.parse(manifest.startedAt);
        await events.emit({
          kind: "backup:completed",
          severity: "info",
          node: source.name,
          message: `backup ${manifest.id} completed: ${manifest.sizeBytes} bytes, ${manifest.storedBytes} stored, ${durationMs} ms`,
          data: { ...backupRecord(manifest), durationMs },
        });
        // Retention after every backup, off the backup's own time (waitForIdle awaits it).
        this.trackAfterwork(
          this.expire()
            .then(() => undefined)
            .catch((error: Error) => this.deps.logger.error({ err: error.message }, "retention after the backup failed")),
        );
        return manifest;
      })
      .catch(async (error: Error) => {
        const failed = slot.id ? await this.deps.repository.readManifest(slot.id) : null;
        if (failed) {
          finalProgress(failed, "failed");
          await events.emit({
            kind: "backup:failed",
            severity: "critical",
            node: source.name,
            message: error.message,
            data: backupRecord(failed),
          });
        }
        throw error;
      })
      .finally(() => {
        stopRenewing();
        void this.deps.lease.release().catch(() => undefined);
        if (this.running === slot) this.running = null;
      });
    const first = await Promise.race([started, slot.done]);
    slot.done.catch(() => undefined); // the caller may not wait for completion
    return { manifest: first, done: slot.done };
  }

  /**
   * What a differential (the newest full) or an incremental (the newest
   * backup of any type) builds on; null when there is none (it is then taken
   * as a full).
   */
  private async referenceFor(type: "differential" | "incremental"): Promise<BackupManifest | null> {
    const completed = (await this.list()).filter(
      (manifest) => manifest.status === "completed" && (type === "incremental" || manifest.type === "full"),
    );
    return completed[completed.length - 1] ?? null;
  }

  /** Live progress of a backup (kept a day after it ended); null when none is known. */
  async progress(id: string): Promise<BackupProgress | null> {
    return this.deps.progress.read(id);
  }

  /** The backups a restore of `manifest` reads, the full first (see backupChain). */
  async chain(manifest: BackupManifest): Promise<BackupManifest[]> {
    return backupChain(this.deps.repository, manifest);
  }

  async list(): Promise<BackupManifest[]> {
    return this.deps.repository.listManifests();
  }

  async get(id: string): Promise<BackupManifest> {
    const manifest = await this.deps.repository.readManifest(id);
    if (!manifest) throw new RelevoError(ErrorCode.NotFound, `no backup with id ${id}`);
    return manifest;
  }

  /** The newest completed backup, for restores that name none. */
  async latestCompleted(): Promise<BackupManifest> {
    const completed = (await this.list()).filter((manifest) => manifest.status === "completed");
    const latest = completed[completed.length - 1];
    if (!latest) throw new RelevoError(ErrorCode.PreconditionFailed, "no completed backup in the repository");
    return latest;
  }

  async recoveryWindow(): Promise<RecoveryWindow> {
    return recoveryWindow(await this.list(), await this.deps.repository.archivedSegmentList());
  }

  /**
   * Expires what retention lets go: older full backups with their
   * dependents (manifest kept, status expired, content removed) and the WAL
   * no kept backup needs.
   */
  async expire(): Promise<{ expired: string[]; walSegmentsRemoved: number }> {
    const plan = planRetention(await this.list(), this.deps.retentionFull);
    for (const id of plan.expire) {
      const manifest = await this.get(id);
      const expired: BackupManifest = { ...manifest, status: "expired" };
      await this.deps.repository.writeManifest(expired);
      await this.deps.repository.removeBackupContent(id);
      await this.deps.events.emit({
        kind: "backup:expired",
        severity: "info",
        node: null,
        message: `backup ${id} expired by retention`,
        data: backupRecord(expired),
      });
    }
    const walSegmentsRemoved = plan.walBefore === null ? 0 : await this.deps.repository.removeSegmentsBefore(plan.walBefore);
    return { expired: [...plan.expire], walSegmentsRemoved };
  }

  async restore(options: { backupId?: string; target: NodeRef; recoveryTarget: RecoveryTarget }): Promise<BackupManifest> {
    const manifest = await chooseBackupIn(this.deps.repository, this.deps.summarizer, options.backupId, options.recoveryTarget);
    await restoreBackup(this.deps, {
      manifest,
      target: options.target,
      recoveryTarget: options.recoveryTarget,
      parallelism: this.deps.parallelism,
      startTimeoutMs: this.deps.startTimeoutMs,
    });
    return manifest;
  }

  async verify(id: string, options: { restoreTest: boolean }): Promise<BackupManifest> {
    await this.referencing.get(id);
    const manifest = await this.get(id);
    if (manifest.status !== "completed")
      throw new RelevoError(ErrorCode.PreconditionFailed, `backup ${id} is ${manifest.status}: only completed backups can be verified`);
    const verification = await verifyBackup({ ...this.deps, host: this.deps.host }, manifest, options);
    const ok = verification.contentOk && (verification.restoreTest?.ok ?? true);
    await this.deps.events.emit({
      kind: "backup:verified",
      severity: ok ? "info" : "critical",
      node: null,
      message: ok
        ? `backup ${id} verified${verification.restoreTest ? ", restore test passed" : ""}`
        : `backup ${id} failed verification: ${verification.badFiles.length ? `damaged ${verification.badFiles.slice(0, 5).join(", ")}` : verification.restoreTest?.error}`,
      data: { id, ok, badFiles: [...verification.badFiles], restoreTested: verification.restoreTest !== null },
    });
    return this.get(id);
  }

  /**
   * Rebuilds the catalog from the repository, its source of truth: every
   * manifest becomes a `backup:cataloged` event, which the consolidator
   * upserts into table backups like any backup event.
   */
  async rescan(): Promise<number> {
    const manifests = await this.list();
    for (const manifest of manifests) {
      await this.deps.events.emit({
        kind: "backup:cataloged",
        severity: "info",
        node: null,
        message: `backup ${manifest.id} (${manifest.status}) read from the repository`,
        data: backupRecord(manifest),
      });
    }
    return manifests.length;
  }

  async waitForIdle(): Promise<void> {
    await this.running?.done.catch(() => undefined);
    await Promise.all(this.afterwork);
  }

  private trackAfterwork(work: Promise<void>): void {
    this.afterwork.add(work);
    void work.finally(() => this.afterwork.delete(work));
  }

  /**
   * After a backup completed: a restore point named after it and every
   * table's checksum at that point, written into its manifest for the
   * restore test. It runs after the backup counts (checksumming a large
   * database takes a while) and does not hold up the next backup; a
   * verification of that backup waits for it.
   */
  private trackReferencePoint(id: string, primary: NodeRef): void {
    const work = (async () => {
      try {
        const point = await captureReferencePoint(primary, this.deps.superuser, `relevo-${id}`, REFERENCE_LOCK_TIMEOUT_MS);
        const current = await this.deps.repository.readManifest(id);
        if (current?.status === "completed") await this.deps.repository.writeManifest({ ...current, referencePoint: point });
        this.deps.logger.info({ id, lsn: point.lsn, tables: point.tables.length }, "reference point recorded for the restore test");
      } catch (error) {
        this.deps.logger.warn(
          { id, err: (error as Error).message },
          "no reference point for the restore test (it checks with pg_amcheck only)",
        );
      } finally {
        this.referencing.delete(id);
      }
    })();
    this.referencing.set(id, work);
    this.trackAfterwork(work);
  }
}

export function backupRecord(manifest: BackupManifest): BackupRecord {
  return {
    id: manifest.id,
    type: manifest.type,
    status: manifest.status,
    source: manifest.source,
    reference: manifest.reference,
    timeline: manifest.timeline || null,
    startLsn: manifest.status === "completed" ? manifest.startLsn : null,
    stopLsn: manifest.stopLsn,
    sizeBytes: manifest.status === "completed" ? manifest.sizeBytes : null,
    storedBytes: manifest.status === "completed" ? manifest.storedBytes : null,
    error: manifest.error,
    startedAt: manifest.startedAt,
    finishedAt: manifest.finishedAt,
  };
}
