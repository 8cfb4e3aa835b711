import { withNodeClient, type Credentials } from "../postgres/connection";
import { conninfoString } from "../postgres/config-values";
import { libpqTlsParameters } from "../postgres/tls-settings";
import {
  INCLUDE_LINE,
  MANAGED_CONF,
  MARKER_FILE,
  hbaNetworkFor,
  managedConf,
  managedHba,
  type NodeMarker,
} from "../postgres/managed-settings";
import { ErrorCode, RelevoError, isRelevoError } from "../errors";
import type { Logger } from "../log";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import { sleep } from "../util/sleep";
import { buffer } from "node:stream/consumers";
import { openStoredBytes, readStoredObject } from "../storage/backup-content";
import { contentCrc32, crc32Hex, decodeBuffer, forEachParallel, storedContentChunks, tap, updateCrc32 } from "../storage/copy-file";
import { backupChain, resolveChainFiles, storedContentLength, type ChainSource, type ResolvedFile } from "../backup/backup-chain";
import { layeredContent } from "../storage/layered-content";
import type { BackupManifest, ManifestEntry } from "../backup/manifest";
import { recoverySettings, standbySettings, stripUpstreamSettings, type RecoveryTarget } from "./recovery-target";
import type { Repository } from "../storage/repository";
import { assertNoMemberPort, restoreTargetAccepted } from "./copy-placement";
import { lockBackup, withLockedBackup, type HeldBackup, type LockedBackup } from "../backup/backup-lock";
import type { HeldFileLock } from "../storage/file-lock";
import { withClaimedTarget } from "./target-claim";
import { WalFeeder } from "./wal-feeder";
import { NODE_WAL_DIRECTORY } from "./node-wal";
import { repositoryWalSource, type WalSource } from "./wal-source";

export interface RestoreDeps {
  readonly clusterName: string;
  readonly maxSlotWalKeepSize: string;
  readonly driver: NodeDriver;
  readonly repository: Repository;
  readonly superuser: Credentials;
  readonly logger: Logger;
  /** Where the WAL fed to the copy comes from; default: the repository's archive. */
  readonly walSource?: WalSource;
}

export interface RestoreOptions {
  readonly manifest: BackupManifest;
  /** A node that does not exist yet: the restored copy. */
  readonly target: NodeRef;
  /** The cluster's members: the copy never takes one's port (see assertNoMemberPort). */
  readonly members: readonly NodeRef[];
  readonly recoveryTarget: RecoveryTarget;
  /** The timeline recovery follows to its target (default: the latest in the archive). */
  readonly timeline?: number | "latest";
  readonly parallelism: number;
  readonly startTimeoutMs: number;
  /**
   * The target's name claimed already by the caller (claimNodeTarget), who
   * had to before it looked at the target (the CLI empties a directory
   * first); otherwise the restore claims it itself.
   */
  readonly claimed?: HeldFileLock;
  /**
   * Disaster recovery only: the target's storage may exist if its data
   * directory is empty (a lost node's adopted container, its volume emptied
   * by destroy()); see restoreTargetAccepted. Every other restore refuses
   * any storage that exists.
   */
  readonly acceptEmptyStorage?: boolean;
}

/**
 * Materialises a backup into a new data directory, verifying every file's
 * checksum as it is written, writes the backup_label and the recovery
 * settings, starts PostgreSQL and waits until recovery has reached the
 * target and the copy is promoted. A failed restore removes what it wrote.
 * It holds the backup's repository lock (and its chain's) throughout, so no
 * expiry takes its content away meanwhile.
 */
export async function restoreBackup(deps: RestoreDeps, options: RestoreOptions): Promise<void> {
  const { manifest, ...rest } = options;
  await withLockedBackup(deps, { id: manifest.id, purpose: `restore into ${options.target.name}` }, (locked) =>
    restoreLockedBackup(deps, { ...rest, locked }),
  );
}

/**
 * restoreBackup for a caller that holds the backup's lock already (a
 * verification's restore test): the backup is the one locked, as read under
 * the lock.
 */
export async function restoreLockedBackup(
  deps: RestoreDeps,
  options: Omit<RestoreOptions, "manifest"> & { readonly locked: LockedBackup },
): Promise<void> {
  const { driver } = deps;
  assertRestorable(options.locked.manifest);
  assertNoMemberPort(options.members, options.target);
  // Claimed from the check that the target is absent to the end: a second restore (or replica) of that name at once
  // would also find it absent, write into the same storage, and, failing, destroy this one's copy.
  await withClaimedTarget(driver, options.target, { purpose: `restore into ${options.target.name}`, claimed: options.claimed }, () =>
    restoreClaimedTarget(deps, options),
  );
}

async function restoreClaimedTarget(
  deps: RestoreDeps,
  options: Omit<RestoreOptions, "manifest"> & { readonly locked: LockedBackup },
): Promise<void> {
  const { driver, repository } = deps;
  const manifest = options.locked.manifest;
  const target = options.target;
  const state = await driver.state(target);
  const dataEntries = state.phase === "stopped" && options.acceptEmptyStorage ? (await driver.listFiles(target, ".")).length : null;
  // Never written over: what is there is someone's (a copy, a node, a stranger's files), and a failed restore removes its target.
  if (!restoreTargetAccepted({ phase: state.phase, dataEntries, acceptEmptyStorage: options.acceptEmptyStorage ?? false })) {
    throw new RelevoError(
      ErrorCode.TargetNotEmpty,
      `restore target ${target.name} already exists (${state.phase}, data in ${driver.dataDirectory(target)}); choose another name or remove it`,
      { details: { target: target.name } },
    );
  }
  const startedAtMs = Date.now();
  await driver.provision(target);
  try {
    await materialise(deps, manifest, target, options.parallelism);
    options.locked.lost.throwIfAborted();
    await driver.writeFile(target, "recovery.signal", "");
    const postgresqlConf = (await driver.readFile(target, "postgresql.conf"))?.toString("utf8") ?? "";
    if (!postgresqlConf.includes(INCLUDE_LINE)) await driver.writeFile(target, "postgresql.conf", `${postgresqlConf}\n${INCLUDE_LINE}\n`);
    // Relevo's pg_hba.conf, not the backup's: a backup taken before TLS, or of a pg_hba.conf edited by hand, would
    // otherwise give the copy lines that admit plaintext logins.
    await driver.writeFile(target, "pg_hba.conf", managedHba(hbaNetworkFor(target.host)));
    await driver.writeFile(
      target,
      MANAGED_CONF,
      managedConf({ clusterName: deps.clusterName, maxSlotWalKeepSize: deps.maxSlotWalKeepSize }, target, driver.tlsPaths(target)) +
        "# Recovery of a restored copy\n" +
        recoverySettings({ target: options.recoveryTarget, timeline: options.timeline }),
    );
    const copiedAtMs = Date.now();
    // The copy reads WAL only from its own directory, fed from here until it is promoted (see node-wal.ts).
    const feeder = await WalFeeder.open({
      driver,
      node: target,
      source: deps.walSource ?? repositoryWalSource(repository, repository.spool),
      logger: deps.logger,
      mode: "recovery",
      timeline: options.timeline ?? "latest",
      from: { timeline: manifest.timeline, lsn: manifest.startLsn },
      parallel: Math.max(2, Math.min(options.parallelism, 8)),
    });
    let startedServerAtMs: number;
    try {
      await driver.start(target, { timeoutMs: options.startTimeoutMs });
      startedServerAtMs = Date.now();
      await waitForPromotion(deps, target, options.startTimeoutMs, options.locked.lost);
      // Lapsed before the promotion was seen: WAL the copy replayed may have been expired under it. Not trusted.
      options.locked.lost.throwIfAborted();
    } finally {
      // Leaves a script that aborts recovery: a copy still running (the wait failed) must not promote on a missing one.
      await feeder.close();
    }
    // Promoted: nothing runs restore_command any more.
    await driver.removeFiles(target, [NODE_WAL_DIRECTORY]);
    deps.logger.info(
      {
        backupId: manifest.id,
        target: target.name,
        copyMs: copiedAtMs - startedAtMs,
        startMs: startedServerAtMs - copiedAtMs,
        recoveryMs: Date.now() - startedServerAtMs,
      },
      "backup restored and promoted",
    );
  } catch (error) {
    await driver
      .destroy(target)
      .catch((destroyError: Error) =>
        deps.logger.error(
          { target: target.name, err: destroyError.message },
          "the failed restore's copy was not removed: stop and remove it by hand",
        ),
      );
    throw error;
  }
  // The copy runs on by itself: what the driver kept beside it to write its files (a tools container) goes.
  await driver
    .releaseHelpers(target)
    .catch((error: Error) => deps.logger.warn({ target: target.name, err: error.message }, "the restored copy's helpers were not removed"));
}

function assertRestorable(manifest: BackupManifest): void {
  if (manifest.status !== "completed" || !manifest.backupLabel) {
    throw new RelevoError(ErrorCode.PreconditionFailed, `backup ${manifest.id} is ${manifest.status}, not restorable`);
  }
}

/**
 * The backup's directories and files in the (provisioned, empty) target,
 * its backup_label and tablespace_map, postgresql.auto.conf without the
 * source's upstream settings, no signal file, and Relevo's node marker.
 */
async function materialise(deps: RestoreDeps, manifest: BackupManifest, target: NodeRef, parallelism: number): Promise<void> {
  const { driver } = deps;
  for (const directory of manifest.files.filter((entry) => entry.type === "directory")) {
    await driver.makeDirectory(target, directory.path);
  }
  await restoreFiles(deps, manifest, target, parallelism);
  await driver.writeFile(target, "backup_label", manifest.backupLabel!);
  if (manifest.tablespaceMap) await driver.writeFile(target, "tablespace_map", manifest.tablespaceMap);
  const autoConf = (await driver.readFile(target, "postgresql.auto.conf"))?.toString("utf8") ?? "";
  await driver.writeFile(target, "postgresql.auto.conf", stripUpstreamSettings(autoConf));
  await driver.removeFiles(target, ["standby.signal", "recovery.signal"]);
  const marker: NodeMarker = { cluster: deps.clusterName, node: target.name, createdAt: new Date().toISOString() };
  await driver.writeFile(target, MARKER_FILE, JSON.stringify({ ...marker, restoredFrom: manifest.id }, null, 2) + "\n");
}

export interface SeedOptions {
  readonly manifest: BackupManifest;
  readonly node: NodeRef;
  readonly upstream: NodeRef;
  readonly slot: string;
  readonly replication: Credentials;
  readonly parallelism: number;
}

/**
 * A new replica from the repository instead of from the primary (which then
 * only streams what the backup and the archive do not have): the backup is
 * materialised into the (absent) node, set up as a standby of `upstream` over
 * its slot, with restore_command reading its own relevo_wal/ to catch up
 * first. Not started: the caller starts it as it starts any node, and closes
 * what this returns, a feeder that fills relevo_wal/ from the archive
 * meanwhile, once the standby streams. The settings go to
 * postgresql.auto.conf, where pg_basebackup -R puts them too. Holds the
 * backup's lock, as restoreBackup does, from before it reads the backup
 * until that close: the catch-up reads the archive from the backup's start,
 * and an expiry skips a locked backup and keeps the WAL it needs (expired
 * meanwhile, that WAL would be in neither the archive nor the slot, which
 * was made later). Null (nothing done) when another holds the lock.
 */
export async function seedStandbyFromBackup(deps: RestoreDeps, options: SeedOptions): Promise<{ close(): Promise<void> } | null> {
  const lock = { id: options.manifest.id, purpose: `seed replica ${options.node.name}`, waitMs: 0 };
  let held: HeldBackup;
  try {
    held = await lockBackup(deps, lock);
  } catch (error) {
    // Seeding runs inside a journaled addReplica or reseed, during which failover checks pause: never wait for a
    // restore test or a CLI restore that may hold the backup for half an hour. The primary seeds the replica instead.
    if (!(isRelevoError(error) && error.code === ErrorCode.LockHeld)) throw error;
    deps.logger.warn({ node: options.node.name, backupId: options.manifest.id, details: error.details }, error.message);
    return null;
  }
  const manifest = held.manifest;
  let feeder: WalFeeder;
  try {
    await seedLockedStandby(deps, { ...options, manifest });
    try {
      feeder = await WalFeeder.open({
        driver: deps.driver,
        node: options.node,
        source: deps.walSource ?? repositoryWalSource(deps.repository, deps.repository.spool),
        logger: deps.logger,
        mode: "standby",
        timeline: "latest",
        from: { timeline: manifest.timeline, lsn: manifest.startLsn },
        parallel: Math.max(2, Math.min(options.parallelism, 8)),
      });
    } catch (error) {
      await deps.driver.destroy(options.node).catch(() => undefined);
      throw error;
    }
  } catch (error) {
    await held.release();
    throw error;
  }
  return {
    close: async () => {
      try {
        await feeder.close();
      } finally {
        await held.release();
      }
    },
  };
}

async function seedLockedStandby(deps: RestoreDeps, options: SeedOptions): Promise<void> {
  const { driver } = deps;
  const { manifest, node, upstream } = options;
  assertRestorable(manifest);
  await driver.provision(node);
  try {
    await materialise(deps, manifest, node, options.parallelism);
    const autoConf = (await driver.readFile(node, "postgresql.auto.conf"))?.toString("utf8") ?? "";
    const conninfo = conninfoString({
      host: upstream.host,
      port: upstream.port,
      user: options.replication.user,
      password: options.replication.password,
      application_name: node.name,
      ...libpqTlsParameters(driver.tlsPaths(node).ca),
    });
    await driver.writeFile(node, "postgresql.auto.conf", `${autoConf.trimEnd()}\n${standbySettings({ conninfo, slot: options.slot })}`);
    await driver.writeFile(node, "standby.signal", "");
  } catch (error) {
    await driver.destroy(node).catch(() => undefined);
    throw error;
  }
}

/**
 * Every file of the backup into the target, resolved down its chain (a
 * differential or incremental stores some blocks and leaves the rest to the
 * backups it builds on): small unchanged files bundle by bundle (one read of
 * the bundle, then each range decoded and written), large ones streamed,
 * files with block-level layers assembled block by block. Every stored
 * content's length and CRC-32 are checked as it is read.
 */
async function restoreFiles(deps: RestoreDeps, manifest: BackupManifest, target: NodeRef, parallelism: number): Promise<void> {
  const files = resolveChainFiles(await backupChain(deps.repository, manifest));
  const bundles = new Map<string, { manifest: BackupManifest; bundle: string; files: ResolvedFile[] }>();
  const streamed: ResolvedFile[] = [];
  for (const file of files) {
    const { base } = file;
    const simple = file.layers.length === 0 && base.entry.size === file.entry.size;
    if (simple && base.entry.stored!.offset !== undefined) {
      const key = `${base.manifest.id}/${base.entry.stored!.path}`;
      const group = bundles.get(key) ?? { manifest: base.manifest, bundle: base.entry.stored!.path, files: [] };
      group.files.push(file);
      bundles.set(key, group);
    } else {
      streamed.push(file);
    }
  }
  streamed.sort((a, b) => b.entry.size - a.entry.size);
  // The large files start first (they set the pace); the bundles share the remaining workers.
  const streamedDone = forEachParallel(streamed, Math.max(1, Math.ceil(parallelism / 2)), (file) =>
    restoreStreamedFile(deps, target, file),
  );
  const bundlesDone = (async () => {
    for (const group of bundles.values()) {
      let data: Buffer;
      try {
        data = await readStoredObject(deps.repository, group.manifest, group.bundle);
      } catch (error) {
        throw await bundleUnreadable(deps, group, error);
      }
      await forEachParallel(group.files, parallelism, async ({ base, entry }) => {
        const stored = base.entry.stored!;
        const offset = stored.offset!;
        const range = data.subarray(offset, offset + stored.bytes);
        if (range.length !== stored.bytes) throw damaged(base.manifest, base.entry, "its bundle is truncated");
        let content: Buffer;
        try {
          content = await decodeBuffer(range, stored.compression);
        } catch (error) {
          throw damaged(base.manifest, base.entry, (error as Error).message);
        }
        if (content.length !== base.entry.size || contentCrc32(content) !== base.entry.crc32)
          throw damaged(base.manifest, base.entry, "it does not match its checksum");
        await deps.driver.writeFile(target, entry.path, content, { fresh: true });
      });
    }
  })();
  const outcomes = await Promise.allSettled([streamedDone, bundlesDone]);
  for (const outcome of outcomes) if (outcome.status === "rejected") throw outcome.reason;
}

/**
 * One file streamed into the target: its base's content with every layer's
 * blocks written over it, cut or extended to the length the newest backup
 * recorded; each source checked against its checksum once read to its end.
 */
async function restoreStreamedFile(deps: RestoreDeps, target: NodeRef, file: ResolvedFile): Promise<void> {
  const checks: Array<() => void> = [];
  const read = (source: ChainSource): AsyncIterable<Buffer> => {
    const stored = source.entry.stored!;
    let crc = 0;
    let bytes = 0;
    checks.push(() => {
      if (bytes !== storedContentLength(source.entry) || crc32Hex(crc) !== source.entry.crc32)
        throw damaged(source.manifest, source.entry, "it does not match its checksum");
    });
    return tap(
      storedContentChunks(() => openStoredBytes(deps.repository, source.manifest, stored), stored),
      (chunk) => {
        crc = updateCrc32(crc, chunk);
        bytes += chunk.length;
      },
    );
  };
  const simple = file.layers.length === 0 && file.base.entry.size === file.entry.size;
  const content = simple
    ? read(file.base)
    : layeredContent(
        read(file.base),
        file.entry.size,
        file.layers.map((layer) => ({ blocks: layer.entry.blocks!, content: read(layer) })),
      );
  try {
    // No fsync per file: PostgreSQL syncs the data directory before it starts recovery (backup_label present).
    await deps.driver.writeStream(target, file.entry.path, content, { durable: false });
  } catch (error) {
    // Named after the newest backup whose content the file needs (the message says which part failed).
    const restored = file.layers.length > 0 ? file.layers[file.layers.length - 1]!.manifest : file.base.manifest;
    if (isRelevoError(error) && error.code === ErrorCode.RepositoryCorrupt) {
      // Which file it was: the object's key alone names no file.
      throw new RelevoError(
        ErrorCode.RepositoryCorrupt,
        `backup ${restored.id} is damaged: ${file.entry.path} could not be restored (${error.message})`,
        {
          cause: error,
          details: { file: file.entry.path, files: [file.entry.path] },
        },
      );
    }
    throw error instanceof RelevoError ? error : damaged(restored, file.entry, (error as Error).message);
  }
  for (const check of checks) check();
}

/**
 * Why a bundle could not be read, naming its files: a bundle whose object
 * fails its checks (REPOSITORY_CORRUPT) is read again file by file, by
 * range, to name the files whose content is damaged (a damaged chunk of
 * the object spoils every file in that MiB, not the whole bundle).
 */
async function bundleUnreadable(
  deps: RestoreDeps,
  group: { readonly manifest: BackupManifest; readonly files: readonly ResolvedFile[] },
  error: unknown,
): Promise<RelevoError> {
  const why = (error as Error).message;
  if (!(isRelevoError(error) && error.code === ErrorCode.RepositoryCorrupt))
    return damaged(group.manifest, group.files[0]!.base.entry, why);
  const bad: string[] = [];
  for (const { base } of group.files) {
    const readable = await (async () => buffer(await openStoredBytes(deps.repository, base.manifest, base.entry.stored!)))().then(
      () => true,
      () => false,
    );
    if (!readable) bad.push(base.entry.path);
  }
  const named = bad.length > 0 ? bad : [group.files[0]!.base.entry.path];
  return new RelevoError(
    ErrorCode.RepositoryCorrupt,
    `backup ${group.manifest.id} is damaged: ${named.slice(0, 5).join(", ")}${named.length > 5 ? ` and ${named.length - 5} more` : ""} could not be restored (${why})`,
    { cause: error, details: { file: named[0], files: named } },
  );
}

/**
 * A stored content that does not decode or match its checksum: REPOSITORY_CORRUPT, as an object failing its own
 * check is, so that a restore over several repositories reads another one's copy (see isRepositoryContentFailure).
 */
function damaged(manifest: BackupManifest, entry: ManifestEntry, why: string): RelevoError {
  return new RelevoError(ErrorCode.RepositoryCorrupt, `backup ${manifest.id} is damaged: ${entry.path} could not be restored (${why})`, {
    details: { file: entry.path },
  });
}

/** Recovery ends with a promotion (recovery_target_action = promote). */
async function waitForPromotion(deps: RestoreDeps, target: NodeRef, timeoutMs: number, lockLost: AbortSignal): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < deadline) {
    lockLost.throwIfAborted();
    try {
      const inRecovery = await withNodeClient(
        target,
        deps.superuser,
        5000,
        async (client) => (await client.query<{ r: boolean }>("SELECT pg_is_in_recovery() AS r")).rows[0]!.r,
      );
      if (!inRecovery) return;
      last = "still in recovery";
    } catch (error) {
      last = (error as Error).message;
    }
    const state = await deps.driver.state(target);
    if (state.phase === "stopped")
      throw new RelevoError(ErrorCode.CommandFailed, `restored copy ${target.name} stopped during recovery (see its server log)`);
    await sleep(250);
  }
  throw new RelevoError(ErrorCode.Timeout, `restored copy ${target.name} did not finish recovery within ${timeoutMs} ms (${last})`);
}
