import { libpqTlsEnvironment } from "../../src/postgres/tls-settings";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import type { BackupManifest, BackupType, ManifestEntry } from "../../src/backup/manifest";
import { contentObjectKey, readStoredObject, removeBackupContent } from "../../src/storage/backup-content";
import type { Repository } from "../../src/storage/repository";
import { CHUNK_SIZE, HEADER_SIZE } from "../../src/repository/object-codec";
import { APP_DATABASE } from "../../src/postgres/managed-settings";
import type { NodeRef } from "../../src/nodes/node-driver";
import type { TestCluster } from "./service";
import { sqlOn } from "./sql";
import { startWriter } from "./writer";
import { freePort } from "./ports";

const run = promisify(execFile);

/** What the backup runbooks ask of one test cluster (its primary is node1). */
export function backupHelpers(cluster: TestCluster) {
  const primary = (): NodeRef => cluster.service.nodes[0]!;

  /** A backup of `type` taken while a writer inserts (into table `ledger`); waits for it and for retention after it. */
  async function backupUnderWriter(type: BackupType): Promise<BackupManifest> {
    const writer = startWriter(primary(), cluster.service.secrets.superuserPassword);
    try {
      const { done } = await cluster.service.backups.start(type);
      return await done;
    } finally {
      expect(await writer.stop()).toBeGreaterThan(0);
      await cluster.service.backups.waitForIdle();
    }
  }

  /**
   * Verifies a backup with a restore test (restored to its reference point,
   * taken on a replica, every table's checksum compared); returns the tables compared.
   * Without a reference point a restore test is pg_amcheck alone and still
   * "ok": that is no restore to the reference, so the point must exist and
   * every one of its tables must have been compared.
   */
  async function restoreTest(id: string): Promise<number> {
    const verified = await cluster.service.backups.verify(id, { restoreTest: true });
    expect(verified.verification).toMatchObject({
      contentOk: true,
      badFiles: [],
      restoreTest: { ok: true, error: null, referenceMissing: null },
    });
    const tables = verified.referencePoint?.tables ?? [];
    expect(tables.length).toBeGreaterThan(0);
    expect(verified.verification!.restoreTest!.tablesCompared).toBe(tables.length);
    return tables.length;
  }

  /** A restore point with nothing written after it in its segment, archived. */
  async function quietPoint(name: string): Promise<void> {
    const sql = <T>(text: string) => sqlOn<T>(primary(), cluster.service.secrets, text);
    await sql(`SELECT pg_create_restore_point('${name}')`);
    const switched = (await sql<{ lsn: string }>("SELECT pg_switch_wal()::text AS lsn"))[0]!.lsn;
    await cluster.service.archiver.waitForArchived(1, switched, switched, 60000);
  }

  /**
   * A node's pg_dumpall, line by line, without what differs between a source
   * and its exact copy: Relevo's own database (it goes on recording events
   * after the point), sequences' setval (WAL-logged 32 values ahead: a
   * recovered one resumes past its last value, as after a crash) and the
   * \restrict lines (a random key per dump).
   */
  async function comparableDump(node: NodeRef): Promise<string[]> {
    const { stdout } = await run(
      "/usr/lib/postgresql/15/bin/pg_dumpall",
      ["-h", node.host, "-p", String(node.port), "-U", "postgres", "--no-role-passwords", `--exclude-database=${APP_DATABASE}`],
      {
        env: { ...process.env, PGPASSWORD: cluster.service.secrets.superuserPassword, ...libpqTlsEnvironment(cluster.service.caFile) },
        maxBuffer: 1 << 28,
      },
    );
    return stdout.split("\n").filter((line) => !/^(SELECT pg_catalog\.setval\(|\\(un)?restrict )/.test(line));
  }

  /** A backup of `type`, waited for: completed, of that type (not taken as a full instead). */
  async function take(type: BackupType): Promise<BackupManifest> {
    const manifest = await (await cluster.service.backups.start(type)).done;
    expect(manifest).toMatchObject({ type, status: "completed" });
    return manifest;
  }

  /**
   * Backup `backupId` restored onto a new node `name` to a new quiet
   * restore point `point`; both dumped for the caller to compare (see
   * comparableDump), and the node returned for it to destroy.
   */
  async function restoreToQuietPoint(options: { readonly backupId: string; readonly name: string; readonly point: string }) {
    await quietPoint(options.point);
    const node: NodeRef = { name: options.name, host: primary().host, port: await freePort() };
    await cluster.service.backups.restore({
      backupId: options.backupId,
      target: node,
      recoveryTarget: { kind: "name", name: options.point },
    });
    return { node, source: await comparableDump(primary()), copy: await comparableDump(node) };
  }

  return { primary, backupUnderWriter, restoreTest, quietPoint, comparableDump, take, restoreToQuietPoint };
}

/** The file a content object of a directory repository is in (a test damages it there). */
export function contentObjectFile(repository: Repository, id: string, relative: string): string {
  return path.join(repository.root, ...contentObjectKey(repository, id, relative).split("/"));
}

/**
 * Flips the byte at content offset `at` of a stored content object, in its
 * file: past the object's header and the proofs of the chunks before it
 * (object-codec's layout, unencrypted). Returns how to put it back.
 */
export async function flipContentByte(repository: Repository, id: string, relative: string, at: number): Promise<() => Promise<void>> {
  const file = contentObjectFile(repository, id, relative);
  const original = await readFile(file);
  const damaged = Buffer.from(original);
  const position = HEADER_SIZE + Math.floor(at / CHUNK_SIZE) * (CHUNK_SIZE + 16) + (at % CHUNK_SIZE);
  damaged[position] = damaged[position]! ^ 0xff;
  await writeFile(file, damaged);
  return () => writeFile(file, original);
}

/**
 * Rewrites a completed backup as the previous layout (manifest version 3)
 * stored it, which repositories written before keep holding: each large
 * file's content raw in `backups/<id>/data/<path>.<compression>`, each
 * bundle raw in `backups/<id>/bundles/<nnnnn>` (offsets unchanged: they
 * were offsets in the bundle's content then too), files 0600 in
 * directories 0700; its objects removed. Returns the rewritten manifest.
 */
export async function asPreviousLayout(repository: Repository, manifest: BackupManifest): Promise<BackupManifest> {
  const legacyPaths = new Map<string, string>();
  const legacyPathOf = (entry: ManifestEntry): string => {
    const stored = entry.stored!;
    if (stored.offset === undefined) return `data/${entry.path}${stored.compression === "none" ? "" : `.${stored.compression}`}`;
    const known = legacyPaths.get(stored.path) ?? `bundles/${String(legacyPaths.size + 1).padStart(5, "0")}`;
    legacyPaths.set(stored.path, known);
    return known;
  };
  const files: ManifestEntry[] = [];
  // Read whole first (a test's backup is small): the objects and the old files share the backup's data/ and bundles/.
  const contents = new Map<string, Buffer>();
  for (const entry of manifest.files) {
    if (!entry.stored) {
      files.push(entry);
      continue;
    }
    const legacy = legacyPathOf(entry);
    if (!contents.has(legacy)) contents.set(legacy, await readStoredObject(repository, manifest, entry.stored.path));
    files.push({ ...entry, stored: { ...entry.stored, path: legacy } });
  }
  await removeBackupContent(repository, manifest);
  for (const [legacy, content] of contents) {
    const file = repository.storedPath(manifest.id, legacy);
    await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    await writeFile(file, content, { mode: 0o600 });
  }
  const previous: BackupManifest = { ...manifest, formatVersion: 3, files };
  await repository.writeManifest(previous);
  return previous;
}
