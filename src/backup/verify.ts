import { findFreePort } from "../util/ports";
import { backupChain, storedContentLength } from "./backup-chain";
import type { NodeRef } from "../nodes/node-driver";
import { crc32Hex, forEachParallel, storedContentChunks, updateCrc32 } from "../storage/copy-file";
import type { StoredSummary } from "../storage/lz4-worker-decode";
import { BundleReaders, openStoredBytes, type ContentOwner } from "../storage/backup-content";
import { checksumMismatches, checksumsOn, referenceRecovery } from "./reference-point";
import { referencePointFor, type ReferenceDeps } from "./take-reference";
import type { WalArchiver } from "../wal/wal-archiver";
import { parseSegmentName, segmentStartLsn } from "../postgres/wal-names";
import type { BackupManifest, ManifestEntry, Verification } from "./manifest";
import type { Repository } from "../storage/repository";
import { restoreLockedBackup, type RestoreDeps } from "../restore/restore";
import { withLockedBackup, type LockedBackup } from "./backup-lock";
import { ErrorCode, RelevoError } from "../errors";
import { randomBytes } from "node:crypto";

/** What a restore needs, plus where scratch nodes listen and how fast to go. */
export interface VerifyDeps extends RestoreDeps, ReferenceDeps {
  readonly host: string;
  /** The restore test waits until the reference point's WAL is archived. */
  readonly archiver: WalArchiver;
  readonly archiveTimeoutMs: number;
  readonly parallelism: number;
  readonly startTimeoutMs: number;
  /** The cluster's members: a scratch node never takes one's port, even a stopped one's. */
  readonly nodes: readonly NodeRef[];
}

/**
 * Proves a backup: (a) every stored file is read back, decompressed, and both
 * checksums (stored bytes, content) compared with the manifest; (b) on
 * request, a restore test: the backup is restored into a scratch node on a
 * free port, started until consistent, checked with pg_amcheck (heap and
 * B-tree consistency of every database), every table compared with the
 * backup's reference point (taken now on a replica when it has none, see
 * referencePointFor), then removed. The result is written into the manifest.
 * Nothing here locks or reads a table on the primary. Only a completed
 * backup is verified (PRECONDITION_FAILED otherwise, also when it was
 * expired while this waited for its lock).
 */
export async function verifyBackup(deps: VerifyDeps, id: string, options: { restoreTest: boolean }): Promise<Verification> {
  // Under the backup's lock: a second verification (the schedule's and the API's) waits for this one, and an
  // expiry cannot run in between, so the result is never written over an expired backup.
  const purpose = options.restoreTest ? "verification with a restore test" : "verification";
  return withLockedBackup(deps, { id, purpose }, (locked) => verifyLockedBackup(deps, locked, options));
}

async function verifyLockedBackup(deps: VerifyDeps, locked: LockedBackup, options: { restoreTest: boolean }): Promise<Verification> {
  const manifest = locked.manifest;
  if (manifest.status !== "completed")
    throw new RelevoError(
      ErrorCode.PreconditionFailed,
      `backup ${manifest.id} is ${manifest.status}: only completed backups can be verified`,
    );
  const badFiles: string[] = [];
  // A differential or incremental is only as good as the backups it builds on: their content is checked too.
  let chain: BackupManifest[];
  try {
    chain = await backupChain(deps.repository, manifest);
  } catch (error) {
    chain = [manifest];
    badFiles.push(`(chain) ${(error as Error).message}`);
  }
  // Each bundle opened once for the files it holds (its header read once, not once per file).
  const readers = new BundleReaders();
  for (const link of chain) {
    await forEachParallel(
      link.files.filter((entry) => entry.type === "file" && !(entry.blocks && !entry.stored)),
      deps.parallelism,
      async (entry) => {
        if (!(await storedFileMatches(deps.repository, link, entry, readers)))
          badFiles.push(link.id === manifest.id ? entry.path : `${link.id}:${entry.path}`);
      },
    );
  }
  badFiles.sort();
  let verified = manifest;
  let restoreTest: Verification["restoreTest"] = null;
  if (options.restoreTest && badFiles.length === 0) {
    const reference = await referencePointFor(deps, manifest);
    verified = reference.manifest;
    restoreTest = await runRestoreTest(deps, { ...locked, manifest: verified }, reference.missing);
  }
  const verification: Verification = {
    checkedAt: new Date().toISOString(),
    contentOk: badFiles.length === 0,
    badFiles,
    restoreTest:
      options.restoreTest && badFiles.length > 0
        ? { ok: false, durationMs: 0, error: "not attempted: stored content is damaged" }
        : restoreTest,
  };
  // Lapsed meanwhile: an expiry may have taken the backup; no verdict is written over it (LOCK_LOST).
  locked.lost.throwIfAborted();
  await deps.repository.writeManifest({ ...verified, verification });
  return verification;
}

async function storedFileMatches(
  repository: Repository,
  link: ContentOwner,
  entry: ManifestEntry,
  readers: BundleReaders,
): Promise<boolean> {
  if (!entry.stored) return false;
  const expected = entry.stored;
  let summary: StoredSummary | null = null;
  let content = 0;
  let contentBytes = 0;
  try {
    const open = () => openStoredBytes(repository, link, expected, readers);
    for await (const chunk of storedContentChunks(open, expected, (seen) => (summary = seen))) {
      content = updateCrc32(content, chunk);
      contentBytes += chunk.length;
    }
  } catch {
    return false; // missing, unreadable, failing its object's checks (REPOSITORY_CORRUPT) or not decodable
  }
  const stored = summary as StoredSummary | null;
  return (
    stored !== null &&
    stored.storedSha256 === expected.sha256 &&
    stored.storedBytes === expected.bytes &&
    crc32Hex(content) === entry.crc32 &&
    contentBytes === storedContentLength(entry)
  );
}

async function runRestoreTest(
  deps: VerifyDeps,
  locked: LockedBackup,
  referenceMissing: string | null,
): Promise<NonNullable<Verification["restoreTest"]>> {
  return { ...(await restoreAndCompare(deps, locked)), referenceMissing };
}

/** The restore test itself: restored to the reference point (or to consistency), pg_amcheck, the tables compared. */
async function restoreAndCompare(deps: VerifyDeps, locked: LockedBackup): Promise<NonNullable<Verification["restoreTest"]>> {
  const started = Date.now();
  const manifest = locked.manifest;
  // A name of its own: a scratch node is never another verification's, and only its own is removed afterwards.
  const scratch: NodeRef = {
    name: `verify-${manifest.id.toLowerCase()}-${randomBytes(3).toString("hex")}`,
    host: deps.host,
    port: await findFreePortExcept(deps.host, deps.nodes),
  };
  const reference = manifest.referencePoint ?? null;
  try {
    if (reference) {
      const segment = parseSegmentName(reference.walFile);
      if (segment)
        await deps.archiver.waitForArchived(segment.timeline, reference.lsn, segmentStartLsn(segment.segment), deps.archiveTimeoutMs);
    }
    const recovery = reference ? referenceRecovery(reference) : { target: { kind: "immediate" } as const, timeline: "latest" as const };
    await restoreLockedBackup(deps, {
      locked,
      target: scratch,
      recoveryTarget: recovery.target,
      timeline: recovery.timeline,
      members: deps.nodes,
      parallelism: deps.parallelism,
      startTimeoutMs: deps.startTimeoutMs,
    });
    const check = await deps.driver.exec(
      scratch,
      [
        "pg_amcheck",
        "-h",
        scratch.host,
        "-p",
        String(scratch.port),
        "-U",
        deps.superuser.user,
        "--all",
        "--install-missing",
        "--no-password",
      ],
      { mode: "online", env: { PGPASSWORD: deps.superuser.password }, allowFailure: true, timeoutMs: 30 * 60 * 1000 },
    );
    if (check.exitCode !== 0) {
      return {
        ok: false,
        durationMs: Date.now() - started,
        error: `pg_amcheck: ${(check.stdout + check.stderr).trim().split("\n").slice(0, 5).join(" | ")}`,
      };
    }
    if (!reference) return { ok: true, durationMs: Date.now() - started, error: null, tablesCompared: 0 };
    const mismatches = checksumMismatches(reference.tables, await checksumsOn(scratch, deps.superuser, reference.tables));
    if (mismatches.length > 0) {
      return {
        ok: false,
        durationMs: Date.now() - started,
        error: `tables differ from reference point ${reference.name}: ${mismatches.slice(0, 5).join("; ")}`,
        tablesCompared: reference.tables.length,
      };
    }
    return { ok: true, durationMs: Date.now() - started, error: null, tablesCompared: reference.tables.length };
  } catch (error) {
    return { ok: false, durationMs: Date.now() - started, error: (error as Error).message };
  } finally {
    // A scratch node left behind holds a full-size data directory (and, local, maybe a running postmaster): say so.
    await deps.driver
      .destroy(scratch)
      .catch((error: Error) =>
        deps.logger.warn({ node: scratch.name, err: error.message }, `the restore test's scratch node ${scratch.name} was not removed`),
      );
  }
}

/** A free port that is no member's: a stopped member's port is free, and a scratch node there would pass for that member. */
async function findFreePortExcept(host: string, members: readonly NodeRef[]): Promise<number> {
  for (;;) {
    const port = await findFreePort(host);
    if (!members.some((node) => node.port === port)) return port;
  }
}
