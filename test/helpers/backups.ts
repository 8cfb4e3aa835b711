import { libpqTlsEnvironment } from "../../src/postgres/tls-settings";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import type { BackupManifest, BackupType } from "../../src/backup/manifest";
import { APP_DATABASE } from "../../src/postgres/managed-settings";
import type { NodeRef } from "../../src/nodes/node-driver";
import type { TestCluster } from "./service";
import { sqlOn } from "./sql";
import { startWriter } from "./writer";

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

  return { primary, backupUnderWriter, restoreTest, quietPoint, comparableDump };
}
