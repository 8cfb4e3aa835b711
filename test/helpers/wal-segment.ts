import { spawnSync } from "node:child_process";
import { chownSync, mkdirSync } from "node:fs";
import path from "node:path";
import { configKeys } from "../../src/config/config-keys";
import { resolvePostgresIdentity } from "../../src/nodes/os-user";

/** A segment's first bytes as PostgreSQL writes them: a long page header naming `systemIdentifier`, 16 MiB segments. */
export function segmentStart(systemIdentifier: bigint): Buffer {
  const header = Buffer.alloc(64);
  header.writeUInt16LE(0xd110, 0);
  header.writeUInt16LE(0x0002, 2);
  header.writeBigUInt64LE(systemIdentifier, 24);
  header.writeUInt32LE(16 * 1024 * 1024, 32);
  return header;
}

/**
 * Three real WAL segments of a fresh cluster (timeline 1, segments 1 to 3;
 * records cross from 1 into 2, and 3 begins with the shutdown checkpoint),
 * made by initdb and a single-user postgres as the PostgreSQL OS user in
 * `home` (root only: it switches user). Returns the directory holding them.
 */
export function realWalSegments(home: string): string {
  const bin = configKeys.pgBinDir.default;
  const cluster = path.join(home, "wal-source");
  mkdirSync(cluster, { mode: 0o700 });
  const postgres = resolvePostgresIdentity("postgres")!;
  chownSync(cluster, postgres.uid, postgres.gid);
  const asPostgres = (command: string[], input?: string): void => {
    const run = spawnSync("runuser", ["-u", "postgres", "--", ...command], { encoding: "utf8", input });
    if (run.status !== 0) throw new Error(`${command.join(" ")} as postgres: ${run.stderr}`);
  };
  const data = path.join(cluster, "data");
  asPostgres([path.join(bin, "initdb"), "-D", data, "-A", "trust", "--no-sync"]);
  // wal_keep_size: the shutdown checkpoint would recycle segments 1 and 2 otherwise.
  asPostgres(
    [path.join(bin, "postgres"), "--single", "-D", data, "-c", "wal_keep_size=1GB", "postgres"],
    [
      "CREATE TABLE t AS SELECT g FROM generate_series(1, 100000) g;",
      "SELECT pg_switch_wal();",
      "CREATE TABLE u AS SELECT g FROM generate_series(1, 1000) g;",
      "SELECT pg_switch_wal();",
      "",
    ].join("\n"),
  );
  return path.join(data, "pg_wal");
}
