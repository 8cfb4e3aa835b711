import { pipeline } from "node:stream/promises";
import { Writable } from "node:stream";
import { findFreePort } from "../cluster/ports";
import type { NodeRef } from "../nodes/node-driver";
import { crc32Counter, decompressor, forEachParallel, openStoredContent, sha256Counter } from "./copy-file";
import type { BackupManifest, ManifestEntry, Verification } from "./manifest";
import type { Repository } from "./repository";
import { restoreBackup, type RestoreDeps } from "./restore";

/** What a restore needs, plus where scratch nodes listen and how fast to go. */
export interface VerifyDeps extends RestoreDeps {
  readonly host: string;
  readonly parallelism: number;
  readonly startTimeoutMs: number;
}

/**
 * Proves a backup: (a) every stored file is read back, decompressed, and both
 * checksums (stored bytes, content) compared with the manifest; (b) on
 * request, a restore test: the backup is restored into a scratch node on a
 * free port, started until consistent, checked with pg_amcheck (heap and
 * B-tree consistency of every database), then removed. The result is written
 * into the manifest.
 */
export async function verifyBackup(deps: VerifyDeps, manifest: BackupManifest, options: { restoreTest: boolean }): Promise<Verification> {
  const badFiles: string[] = [];
  await forEachParallel(
    manifest.files.filter((entry) => entry.type === "file"),
    deps.parallelism,
    async (entry) => {
      if (!(await storedFileMatches(deps.repository, manifest.id, entry))) badFiles.push(entry.path);
    },
  );
  badFiles.sort();
  const restoreTest = options.restoreTest && badFiles.length === 0 ? await runRestoreTest(deps, manifest) : null;
  const verification: Verification = {
    checkedAt: new Date().toISOString(),
    contentOk: badFiles.length === 0,
    badFiles,
    restoreTest: options.restoreTest && badFiles.length > 0 ? { ok: false, durationMs: 0, error: "not attempted: stored content is damaged" } : restoreTest,
  };
  await deps.repository.writeManifest({ ...manifest, verification });
  return verification;
}

async function storedFileMatches(repository: Repository, id: string, entry: ManifestEntry): Promise<boolean> {
  if (!entry.stored) return false;
  const stored = sha256Counter();
  const content = crc32Counter();
  const sink = new Writable({ write: (_chunk, _encoding, callback) => callback() });
  try {
    const source = openStoredContent(repository.storedPath(id, entry.stored.path), entry.stored);
    const codec = decompressor(entry.stored.compression);
    if (codec) await pipeline(source, stored, codec, content, sink);
    else await pipeline(source, stored, content, sink);
  } catch {
    return false; // missing, unreadable or not valid gzip
  }
  const storedResult = stored.result();
  const contentResult = content.result();
  return storedResult.sha256 === entry.stored.sha256 && storedResult.bytes === entry.stored.bytes && contentResult.crc32 === entry.crc32 && contentResult.bytes === entry.size;
}

async function runRestoreTest(deps: VerifyDeps, manifest: BackupManifest): Promise<NonNullable<Verification["restoreTest"]>> {
  const started = Date.now();
  const scratch: NodeRef = { name: `verify-${manifest.id.toLowerCase()}`, host: deps.host, port: await findFreePort(deps.host) };
  try {
    await restoreBackup(deps, { manifest, target: scratch, recoveryTarget: { kind: "immediate" }, parallelism: deps.parallelism, startTimeoutMs: deps.startTimeoutMs });
    const check = await deps.driver.exec(
      scratch,
      ["pg_amcheck", "-h", scratch.host, "-p", String(scratch.port), "-U", deps.superuser.user, "--all", "--install-missing", "--no-password"],
      { mode: "online", env: { PGPASSWORD: deps.superuser.password }, allowFailure: true, timeoutMs: 30 * 60 * 1000 },
    );
    if (check.exitCode !== 0) {
      return { ok: false, durationMs: Date.now() - started, error: `pg_amcheck: ${(check.stdout + check.stderr).trim().split("\n").slice(0, 5).join(" | ")}` };
    }
    return { ok: true, durationMs: Date.now() - started, error: null };
  } catch (error) {
    return { ok: false, durationMs: Date.now() - started, error: (error as Error).message };
  } finally {
    await deps.driver.destroy(scratch).catch(() => undefined);
  }
}
