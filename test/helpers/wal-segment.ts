import { spawnSync } from "node:child_process";
import { chownSync, mkdirSync } from "node:fs";
import path from "node:path";
import { configKeys } from "../../src/config/config-keys";
import { resolvePostgresIdentity } from "../../src/nodes/os-user";
import { parseSegmentName, SEGMENT_SIZE } from "../../src/postgres/wal-names";
import { XLOG_PAGE_MAGIC_15 } from "../../src/postgres/wal-page-header";

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

/**
 * A whole segment as the pusher accepts it for `name`: 16 MiB, its first
 * page PostgreSQL 15's long header for that segment (timeline, page
 * address) of cluster `systemIdentifier`, `marker` written after the
 * header (to tell two branches of one name apart), zeros after.
 */
export function walSegment(name: string, systemIdentifier: bigint, marker = ""): Buffer {
  const parsed = parseSegmentName(name);
  if (!parsed) throw new Error(`${name} is not a segment name`);
  const segment = Buffer.alloc(SEGMENT_SIZE);
  segment.writeUInt16LE(XLOG_PAGE_MAGIC_15, 0);
  segment.writeUInt16LE(0x0002, 2);
  segment.writeUInt32LE(parsed.timeline, 4);
  segment.writeBigUInt64LE(BigInt(parsed.segment) * BigInt(SEGMENT_SIZE), 8);
  segment.writeBigUInt64LE(systemIdentifier, 24);
  segment.writeUInt32LE(SEGMENT_SIZE, 32);
  segment.writeUInt32LE(8192, 36);
  segment.write(marker, 64, "utf8");
  return segment;
}
