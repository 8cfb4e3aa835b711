import type { Readable } from "node:stream";
import { withNodeClient, type Credentials } from "../cluster/node-connection";
import { INCLUDE_LINE, MANAGED_CONF, MARKER_FILE, managedConf, type NodeMarker } from "../cluster/node-settings";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import { sleep } from "../util/sleep";
import { crc32Counter, decompressor, forEachParallel, openStoredContent } from "./copy-file";
import type { BackupManifest, ManifestEntry } from "./manifest";
import { recoverySettings, stripUpstreamSettings, type RecoveryTarget } from "./recovery-target";
import type { Repository } from "./repository";

export interface RestoreDeps {
  readonly clusterName: string;
  readonly maxSlotWalKeepSize: string;
  readonly driver: NodeDriver;
  readonly repository: Repository;
  readonly superuser: Credentials;
  readonly logger: Logger;
}

export interface RestoreOptions {
  readonly manifest: BackupManifest;
  /** A node that does not exist yet: the restored copy. */
  readonly target: NodeRef;
  readonly recoveryTarget: RecoveryTarget;
  readonly parallelism: number;
  readonly startTimeoutMs: number;
}

/**
 * Materialises a backup into a new data directory, verifying every file's
 * checksum as it is written, writes the backup_label and the recovery
 * settings, starts PostgreSQL and waits until recovery has reached the
 * target and the copy is promoted. A failed restore removes what it wrote.
 */
export async function restoreBackup(deps: RestoreDeps, options: RestoreOptions): Promise<void> {
  const { driver, repository } = deps;
  const manifest = options.manifest;
  const target = options.target;
  if (manifest.status !== "completed" || !manifest.backupLabel) {
    throw new RelevoError(ErrorCode.PreconditionFailed, `backup ${manifest.id} is ${manifest.status}, not restorable`);
  }
  const state = await driver.state(target);
  if (state.phase !== "absent") {
    throw new RelevoError(ErrorCode.PreconditionFailed, `restore target ${target.name} already exists; choose another name or remove it`);
  }
  await driver.provision(target);
  try {
    for (const directory of manifest.files.filter((entry) => entry.type === "directory")) {
      await driver.makeDirectory(target, directory.path);
    }
    await forEachParallel(
      manifest.files.filter((entry) => entry.type === "file"),
      options.parallelism,
      (entry) => restoreFile(deps, manifest, target, entry),
    );
    await driver.writeFile(target, "backup_label", manifest.backupLabel);
    if (manifest.tablespaceMap) await driver.writeFile(target, "tablespace_map", manifest.tablespaceMap);
    const autoConf = (await driver.readFile(target, "postgresql.auto.conf"))?.toString("utf8") ?? "";
    await driver.writeFile(target, "postgresql.auto.conf", stripUpstreamSettings(autoConf));
    await driver.removeFiles(target, ["standby.signal"]);
    await driver.writeFile(target, "recovery.signal", "");
    const postgresqlConf = (await driver.readFile(target, "postgresql.conf"))?.toString("utf8") ?? "";
    if (!postgresqlConf.includes(INCLUDE_LINE)) await driver.writeFile(target, "postgresql.conf", `${postgresqlConf}\n${INCLUDE_LINE}\n`);
    await driver.writeFile(
      target,
      MANAGED_CONF,
      managedConf({ clusterName: deps.clusterName, maxSlotWalKeepSize: deps.maxSlotWalKeepSize }, target) +
        "# Recovery of a restored copy\n" +
        recoverySettings({ walDir: repository.walDir, target: options.recoveryTarget }),
    );
    const marker: NodeMarker = { cluster: deps.clusterName, node: target.name, createdAt: new Date().toISOString() };
    await driver.writeFile(target, MARKER_FILE, JSON.stringify({ ...marker, restoredFrom: manifest.id }, null, 2) + "\n");
    await driver.start(target, { timeoutMs: options.startTimeoutMs });
    await waitForPromotion(deps, target, options.startTimeoutMs);
  } catch (error) {
    await driver.destroy(target).catch(() => undefined);
    throw error;
  }
}

async function restoreFile(deps: RestoreDeps, manifest: BackupManifest, target: NodeRef, entry: ManifestEntry): Promise<void> {
  if (!entry.stored) throw new RelevoError(ErrorCode.Internal, `manifest of ${manifest.id} has no content for ${entry.path}`);
  const check = crc32Counter();
  const file = openStoredContent(deps.repository.storedPath(manifest.id, entry.stored.path), entry.stored);
  // pipe() does not forward errors: a missing or corrupt stored file must fail the write.
  const stages: Readable[] = [file];
  const codec = decompressor(entry.stored.compression);
  if (codec) stages.push(file.pipe(codec));
  for (const stage of stages) stage.on("error", (error) => check.destroy(error));
  try {
    // No fsync per file: PostgreSQL syncs the data directory before it starts recovery (backup_label present).
    await deps.driver.writeStream(target, entry.path, stages[stages.length - 1]!.pipe(check), { durable: false });
  } catch (error) {
    throw new RelevoError(ErrorCode.PreconditionFailed, `backup ${manifest.id} is damaged: ${entry.path} could not be read back (${(error as Error).message})`, {
      cause: error,
      details: { file: entry.path },
    });
  }
  const { bytes, crc32 } = check.result();
  if (crc32 !== entry.crc32 || bytes !== entry.size) {
    throw new RelevoError(ErrorCode.PreconditionFailed, `backup ${manifest.id} is damaged: ${entry.path} does not match its checksum`, {
      details: { file: entry.path },
    });
  }
}

/** Recovery ends with a promotion (recovery_target_action = promote). */
async function waitForPromotion(deps: RestoreDeps, target: NodeRef, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < deadline) {
    try {
      const inRecovery = await withNodeClient(target, deps.superuser, 5000, async (client) => (await client.query("SELECT pg_is_in_recovery() AS r")).rows[0].r as boolean);
      if (!inRecovery) return;
      last = "still in recovery";
    } catch (error) {
      last = (error as Error).message;
    }
    const state = await deps.driver.state(target);
    if (state.phase === "stopped") throw new RelevoError(ErrorCode.CommandFailed, `restored copy ${target.name} stopped during recovery (see its server log)`);
    await sleep(250);
  }
  throw new RelevoError(ErrorCode.Timeout, `restored copy ${target.name} did not finish recovery within ${timeoutMs} ms (${last})`);
}
