import { createHash } from "node:crypto";
import { readdir, rmdir } from "node:fs/promises";
import path from "node:path";
import { assertBackupId } from "../backup/manifest";
import { recoverCluster } from "../restore/disaster-recovery";
import { seededFrom } from "../restore/replica-seed";
import { assertPortFree } from "../util/ports";
import { chooseBackupAcross } from "../restore/choose-backup";
import { restoreFromRepositories } from "../restore/restore-from-repositories";
import { withClusterRepositories } from "../storage/repository-set";
import { walSummarizerFor } from "../wal/wal-summary";
import { recoveryTargetFrom, type RecoveryTarget } from "../restore/recovery-target";
import { connectionUri, fixedTrust } from "../postgres/connection";
import { MARKER_FILE, ROLE_SUPERUSER } from "../postgres/managed-settings";
import { loadMembers } from "../cluster/membership";
import { assertNoMemberPort, assertNotMemberDirectory, assertRestoredCopy, parseMarkerFacts } from "../restore/copy-placement";
import { resolveRealPath } from "../util/real-path";
import type { RelevoConfig } from "../config/config";
import { ErrorCode, RelevoError } from "../errors";
import type { HeldFileLock } from "../storage/file-lock";
import { claimNodeTarget } from "../restore/target-claim";
import type { Logger } from "../log";
import { createNodeDriver, usingDriver } from "../nodes/create-driver";
import { uriTlsParameters } from "../postgres/tls-settings";
import { CertificateAuthority, readTrustedCa } from "../tls/certificate-authority";
import { nodeTlsSource } from "../tls/node-tls";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import { recordRebuiltCluster, refuseWhileInstanceLive } from "../failover/rebuilt-cluster";
import { withClusterRedis } from "./cluster-redis";
import { BackupLocks } from "../storage/backup-locks";
import { readSecrets } from "../secrets/secrets-store";
import { sleep } from "../util/sleep";
import { callApi } from "./api-client";
import type { Output } from "./commands";

const BACKUP_FIELDS = "id type status startedAt finishedAt sizeBytes storedBytes fileCount timeline startLsn stopLsn source error";
const TYPES: Record<string, string> = { full: "FULL", diff: "DIFFERENTIAL", incr: "INCREMENTAL" };

interface BackupRow {
  id: string;
  type: string;
  status: string;
  startedAt: string;
  finishedAt: string | null;
  sizeBytes: number | null;
  storedBytes: number | null;
  error: string | null;
}

export async function backupCreateCommand(
  config: RelevoConfig,
  options: { type: string; wait: boolean; repo?: string },
  output: Output,
): Promise<void> {
  const type = TYPES[options.type];
  if (!type) throw new RelevoError(ErrorCode.BadUserInput, `unknown backup type "${options.type}": use full, diff or incr`);
  if (options.repo !== undefined && !/^[1-9]\d{0,2}$/.test(options.repo)) {
    throw new RelevoError(ErrorCode.BadUserInput, `--repo ${JSON.stringify(options.repo)}: a repository's number (1, 2, …)`);
  }
  const { createBackup } = await callApi<{ createBackup: BackupRow }>(
    config,
    `mutation($type: BackupType!, $repository: Int) { createBackup(type: $type, repository: $repository) { ${BACKUP_FIELDS} } }`,
    { type, repository: options.repo === undefined ? null : Number(options.repo) },
  );
  output.out(createBackup.id);
  if (!options.wait) return;
  for (;;) {
    const { backup } = await callApi<{ backup: BackupRow & { progress: ProgressRow | null } }>(
      config,
      `query($id: ID!) { backup(id: $id) { ${BACKUP_FIELDS} progress { phase bytesDone bytesTotal bytesPerSecond etaSeconds } } }`,
      { id: createBackup.id },
    );
    if (process.stderr.isTTY && backup.progress) process.stderr.write(`\r${progressBar(backup.progress)}`);
    if (backup.status === "COMPLETED" || backup.status === "FAILED") {
      if (process.stderr.isTTY) process.stderr.write("\n");
      if (backup.status === "FAILED") throw new RelevoError(ErrorCode.CommandFailed, `backup ${backup.id} failed: ${backup.error}`);
      return;
    }
    await sleep(500);
  }
}

interface ProgressRow {
  phase: string;
  bytesDone: number;
  bytesTotal: number;
  bytesPerSecond: number;
  etaSeconds: number | null;
}

/** One terminal line: [#####.....]  45%  120 MB/s  ETA 3 s  copying. Pure. */
export function progressBar(progress: ProgressRow, width = 30): string {
  const fraction = progress.bytesTotal > 0 ? Math.min(1, progress.bytesDone / progress.bytesTotal) : 0;
  const filled = Math.round(fraction * width);
  const rate = `${(progress.bytesPerSecond / 1024 / 1024).toFixed(0)} MB/s`;
  const eta = progress.etaSeconds === null ? "" : `  ETA ${progress.etaSeconds} s`;
  return `[${"#".repeat(filled)}${".".repeat(width - filled)}] ${String(Math.round(fraction * 100)).padStart(3)}%  ${rate}${eta}  ${progress.phase}   `;
}

export async function backupVerifyCommand(
  config: RelevoConfig,
  options: { id: string; restoreTest: boolean },
  output: Output,
): Promise<void> {
  assertBackupId(options.id);
  const { verifyBackup } = await callApi<{
    verifyBackup: {
      id: string;
      verification: { contentOk: boolean; badFiles: string[]; restoreTest: { ok: boolean; error: string | null } | null };
    };
  }>(
    config,
    `mutation($id: ID!, $restoreTest: Boolean!) { verifyBackup(id: $id, restoreTest: $restoreTest) { id verification { contentOk badFiles restoreTest { ok error } } } }`,
    { id: options.id, restoreTest: options.restoreTest },
  );
  const verification = verifyBackup.verification;
  output.out(`content: ${verification.contentOk ? "ok" : `DAMAGED: ${verification.badFiles.join(", ")}`}`);
  if (verification.restoreTest)
    output.out(`restore test: ${verification.restoreTest.ok ? "ok" : `FAILED: ${verification.restoreTest.error}`}`);
  if (!verification.contentOk || verification.restoreTest?.ok === false) {
    throw new RelevoError(ErrorCode.PreconditionFailed, `backup ${options.id} failed verification`);
  }
}

export async function backupListCommand(config: RelevoConfig, options: { json: boolean }, output: Output): Promise<void> {
  const { backups } = await callApi<{ backups: { edges: Array<{ node: BackupRow }> } }>(
    config,
    `{ backups(first: 200) { edges { node { ${BACKUP_FIELDS} } } } }`,
  );
  const rows = backups.edges.map((edge) => edge.node);
  if (options.json) {
    output.out(JSON.stringify(rows, null, 2));
    return;
  }
  output.out(
    ["ID".padEnd(20), "TYPE".padEnd(12), "STATUS".padEnd(10), "STARTED".padEnd(24), "SIZE".padStart(14), "STORED".padStart(14)].join("  "),
  );
  for (const row of rows) {
    output.out(
      [
        row.id.padEnd(20),
        row.type.padEnd(12),
        row.status.padEnd(10),
        row.startedAt.padEnd(24),
        String(row.sizeBytes ?? "-").padStart(14),
        String(row.storedBytes ?? "-").padStart(14),
      ].join("  "),
    );
  }
}

/**
 * `relevo restore --to <dir> --port <n>`: a standalone copy, restored here by
 * the CLI itself from the repository (the service need not run: this is also
 * how one looks at a backup when the cluster is gone), started on that port
 * and left running. Its data directory is <dir>/data; the last line printed
 * is its connection URI.
 */
export async function restoreCommand(
  config: RelevoConfig,
  options: { to: string; port: number; backup?: string; time?: string; lsn?: string; name?: string },
  logger: Logger,
  output: Output,
): Promise<void> {
  const recoveryTarget = recoveryTargetFrom(options);
  const directory = path.resolve(options.to);
  const target = { name: copyNodeName(directory), host: config.host, port: options.port };
  await usingDriver(await copyDriver(config, directory), async (driver) => {
    // Never a member's directory, however spelled: its claim file would be the member's own, and a reseed making the
    // member again would write where the copy does.
    await refuseMemberDirectory(directory, await loadMembers(config), driver);
    // Claimed first, as every restore claims its target (<dir>.restore.lock): a second restore into the directory is
    // refused before this one reads or writes anything, the empty directory's removal included.
    const claimed = await claimNodeTarget(driver, target, { purpose: `restore into ${directory}` });
    try {
      await restoreClaimedCopy(config, { ...options, directory, recoveryTarget, target, driver, claimed }, logger, output);
    } finally {
      await claimed.release();
    }
  });
}

async function restoreClaimedCopy(
  config: RelevoConfig,
  options: {
    to: string;
    port: number;
    backup?: string;
    directory: string;
    recoveryTarget: RecoveryTarget;
    target: NodeRef;
    driver: NodeDriver;
    claimed: HeldFileLock;
  },
  logger: Logger,
  output: Output,
): Promise<void> {
  const { directory, recoveryTarget, target, driver } = options;
  const secrets = await readSecrets(config.home);
  const trust = await readTrustedCa(config);
  const superuser = { user: ROLE_SUPERUSER, password: secrets.superuserPassword, database: "postgres", trustedCa: fixedTrust(trust.pem) };
  const members = await loadMembers(config);
  assertNoMemberPort(members, target);
  // The backups' locks live in the cluster's Redis (the service's, shared with it when it runs; else Relevo's own,
  // started for the while): reached before anything is made, so that a restore no expiry can undercut is all there is.
  const restored = await withClusterRedis(config, secrets, logger, async (redis, keys) => {
    await driver.checkPrerequisites();
    const locks = new BackupLocks(redis, keys, { ttlMs: config.leaseTtlMs, logger });
    // Opened with its keys before the target is touched: a wrong or missing pass changes nothing.
    const opening = { walOwner: await driver.fileOwner(), locks, create: false, logger };
    return withClusterRepositories(config, opening, async (repositories) => {
      await takeEmptyDirectory(directory);
      const summarizer = walSummarizerFor(repositories.first.repository, config, logger);
      const { manifest: chosen, plan } = await chooseBackupAcross(repositories, summarizer, options.backup, recoveryTarget);
      return restoreFromRepositories(
        { clusterName: config.clusterName, maxSlotWalKeepSize: config.maxSlotWalKeepSize, driver, repositories, superuser, logger },
        {
          backupId: chosen.id,
          plan,
          target,
          members,
          recoveryTarget,
          parallelism: config.backupParallelism,
          startTimeoutMs: config.startTimeoutMs,
          claimed: options.claimed,
        },
      );
    });
  });
  const { manifest } = restored;
  output.out(
    `restored backup ${manifest.id} into ${directory}/data from repository ${restored.repository}, running on port ${options.port} ` +
      `(stop it with: relevo restore stop --to ${options.to})`,
  );
  output.out(connectionUri([target], superuser, uriTlsParameters(trust.file)));
}

/** `relevo restore --cluster`: see recoverCluster. The service must not be running meanwhile. */
export async function restoreClusterCommand(
  config: RelevoConfig,
  options: { backup?: string; time?: string; lsn?: string; name?: string; force?: boolean },
  logger: Logger,
  output: Output,
): Promise<void> {
  const recoveryTarget = recoveryTargetFrom(options);
  await assertPortFree(config.host, config.apiPort, "the API (is relevo up running? stop it first)", "RELEVO_API_PORT");
  const secrets = await readSecrets(config.home);
  // The recorded state lives in Redis: reached first, so that nothing is rebuilt that it cannot be told about.
  const recovered = await withClusterRedis(config, secrets, logger, async (redis, keys) => {
    // The API port proves only that no instance runs here: one elsewhere on the same Redis holds its leases.
    await refuseWhileInstanceLive(redis, keys, { force: options.force ?? false });
    const ca = await CertificateAuthority.load(config);
    // The members made again: what each is issued is recorded, as the service's starts record it.
    return usingDriver(createNodeDriver(config, { tls: nodeTlsSource(ca, { recordIn: config.home }) }), async (driver) => {
      const locks = new BackupLocks(redis, keys, { ttlMs: config.leaseTtlMs, logger });
      const recordRebuilt = async (primary: NodeRef): Promise<void> => {
        await recordRebuiltCluster(redis, keys, primary.name);
      };
      const opening = { walOwner: await driver.fileOwner(), locks, create: false, logger };
      return withClusterRepositories(config, opening, (repositories) =>
        recoverCluster(
          { config, driver, repositories, secrets, trustedCa: fixedTrust(ca.certificatePem), logger, recordRebuilt },
          { backupId: options.backup, recoveryTarget },
        ),
      );
    });
  });
  for (const remains of recovered.setAside) {
    output.out(`${remains.node}: ${remains.why}: kept, not deleted, in ${remains.keptIn}`);
  }
  for (const outcome of recovered.outcomes) {
    output.out(`${outcome.node.name}: ${outcome.phase === "seeded" ? seededFrom(outcome) : "restored from the repository, primary"}`);
  }
  output.out(`cluster rebuilt from backup ${recovered.manifest.id}; its nodes are running: start Relevo with relevo up`);
}

/**
 * `relevo restore stop --to <dir>`: stops the copy in that directory, and
 * nothing else: what runs there must be a restored copy by its marker, never
 * a member (whose directory the driver would stop just the same).
 */
export async function restoreStopCommand(config: RelevoConfig, options: { to: string }, output: Output): Promise<void> {
  const directory = path.resolve(options.to);
  const members = await loadMembers(config);
  const stopped = await usingDriver(await copyDriver(config, directory), async (driver) => {
    const copy = { name: copyNodeName(directory), host: config.host, port: 0 };
    try {
      if ((await driver.state(copy)).phase === "absent") return false;
      assertRestoredCopy(directory, parseMarkerFacts(await driver.readFile(copy, MARKER_FILE)), members);
      await driver.stop(copy, { mode: "fast", timeoutMs: 60000 });
      return true;
    } finally {
      await driver.releaseHelpers(copy).catch((error: Error) => output.out(`(its helper container was not removed: ${error.message})`));
    }
  });
  output.out(stopped ? `stopped the copy in ${directory}` : `no restored copy in ${directory}: nothing to stop`);
}

/** See assertNotMemberDirectory: both sides compared as real paths. */
async function refuseMemberDirectory(directory: string, members: readonly NodeRef[], driver: NodeDriver): Promise<void> {
  const places: Array<{ name: string; directory: string }> = [];
  for (const member of members) {
    const place = driver.nodeDirectory(member);
    if (place !== null) places.push({ name: member.name, directory: await resolveRealPath(place) });
  }
  assertNotMemberDirectory(await resolveRealPath(directory), places);
}

/**
 * A restore writes only into a new or empty directory: anything there is
 * someone's, and a failed restore removes its directory. An empty one is
 * removed first, so that every driver sees a node that does not exist yet.
 */
async function takeEmptyDirectory(directory: string): Promise<void> {
  let entries: string[];
  try {
    entries = await readdir(directory);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return;
    if (code === "ENOTDIR") throw notEmpty(directory, "it is a file");
    throw error;
  }
  if (entries.length > 0) throw notEmpty(directory, `it holds ${entries.slice(0, 3).join(", ")}${entries.length > 3 ? ", …" : ""}`);
  await rmdir(directory);
}

function notEmpty(directory: string, why: string): RelevoError {
  return new RelevoError(
    ErrorCode.TargetNotEmpty,
    `${directory} is not empty (${why}): a restore writes only into a new or empty directory; choose another or empty it; nothing was written`,
    { details: { directory } },
  );
}

/** A restored copy's node: named after its directory (on Docker its container's name, so two copies never clash). */
function copyNodeName(directory: string): string {
  return `copy-${createHash("sha256").update(directory).digest("hex").slice(0, 10)}`;
}

/** The configured driver, with the copy's data in the directory given (bind-mounted on Docker); the copy's certificate from the home's CA. */
async function copyDriver(config: RelevoConfig, directory: string): Promise<NodeDriver> {
  const ca = await CertificateAuthority.load(config);
  return createNodeDriver(config, { tls: nodeTlsSource(ca), directories: { [copyNodeName(directory)]: directory } });
}
