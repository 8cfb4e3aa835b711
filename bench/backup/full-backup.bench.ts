/**
 * bench/backup: a full backup of a pgbench database (scale BENCH_SCALE,
 * default 70, about 1 GB) against pg_basebackup (and pgBackRest, when
 * installed) on the same database in the same run, and the restore time;
 * then a differential after a contiguous 1% of pgbench_accounts is updated
 * and an incremental after another 1%, with the restore time of that chain.
 * Prints a table.
 * Targets: full within 1.3x pg_basebackup's time, storage comparable to an
 * lz4-compressed copy; restore within 1.5x of the full backup's time;
 * incremental under 15% of the full's time and 3% of its bytes; chain
 * restore within 1.5x of the full backup's time.
 * Once per driver (BENCH_DRIVERS, default "local,docker"; on Docker the nodes
 * are containers of BENCH_DOCKER_IMAGE, default relevo-test/postgres:15, and
 * pgBackRest, which reads the data directory, is left out): one column group
 * per driver, the contenders measured against that driver's cluster.
 * Then, for the first driver, the same cluster with repository 1 in an S3
 * bucket (BENCH_REPOSITORIES, default "dir,s3"): s3rver on loopback in a
 * process of its own, Relevo's rows only, compared with the directory's;
 * s3rver's CPU time says how much of the time is the test server's.
 * Both: the WAL pushed during pgbench -i (MB/s) and the peak growth of the
 * service's RSS during a full backup.
 * Target (S3): full backup and restore within 1.5x of the directory.
 * Run: npm run build && npm run bench:backup
 */
import "reflect-metadata";
import { BENCH_DOCKER_IMAGE, measureOnEachDriver, type BenchDriver } from "../drivers";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, chown, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { connectionUri } from "../../src/postgres/connection";
import { libpqTlsEnvironment, uriTlsParameters } from "../../src/postgres/tls-settings";
import { findFreePort } from "../../src/util/ports";
import { loadConfig } from "../../src/config/config";
import type { BackupManifest } from "../../src/backup/manifest";
import { segmentNumber, segmentStartLsn } from "../../src/postgres/wal-names";
import { createLogger } from "../../src/log";
import { resolvePostgresIdentity } from "../../src/nodes/os-user";
import { startRelevo } from "../../src/service";
import { lsnToNumber } from "../../src/postgres/lsn";
import { peakRssGrowth, startS3ServerProcess, type S3ServerProcess } from "../s3-server";

const run = promisify(execFile);
const SCALE = Number(process.env.BENCH_SCALE ?? 70);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);

const PGBACKREST = "/usr/bin/pgbackrest";

/** A pgBackRest stanza on the primary's data directory, in a scratch repository; full() times one full backup. */
async function pgBackRestContender(
  parent: string,
  dataDirectory: string,
  port: number,
  password: string,
  tlsEnv: Record<string, string>,
): Promise<{ backup(type: "full" | "diff" | "incr"): Promise<{ ms: number; bytes: number }> }> {
  const dir = await mkdtemp(path.join(parent, "pgbackrest-"));
  const identity = resolvePostgresIdentity("postgres");
  await chmod(dir, 0o755);
  if (identity) await chown(dir, identity.uid, identity.gid);
  const options = [
    "--stanza=bench",
    `--pg1-path=${dataDirectory}`,
    `--pg1-port=${port}`,
    "--pg1-user=postgres",
    `--repo1-path=${dir}/repo`,
    `--lock-path=${dir}/lock`,
    `--log-path=${dir}/log`,
    "--log-level-console=error",
    "--log-level-file=off",
  ];
  const backupOptions = ["--compress-type=lz4", "--process-max=2", "--archive-check=n", "--start-fast", "--repo1-retention-full=100"];
  const pgbackrest = (command: string, extra: string[] = []) =>
    run(PGBACKREST, [...options, ...extra, command], {
      uid: identity?.uid,
      gid: identity?.gid,
      env: { ...process.env, PGHOST: "127.0.0.1", PGPASSWORD: password, ...tlsEnv },
    });
  await pgbackrest("stanza-create");
  return {
    backup: async (type) => {
      process.stderr.write(`pgBackRest ${type}…\n`);
      const before = await directoryBytes(`${dir}/repo`);
      const result = await timed(() => pgbackrest("backup", [`--type=${type}`, ...backupOptions]));
      return { ms: result.ms, bytes: (await directoryBytes(`${dir}/repo`)) - before };
    },
  };
}

/** The run with the median time (the lower middle one for an even count). */
function median<T extends { ms: number }>(runs: readonly T[]): T {
  return [...runs].sort((a, b) => a.ms - b.ms)[Math.floor((runs.length - 1) / 2)]!;
}

async function directoryBytes(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) total += (await stat(path.join(entry.parentPath ?? (entry as unknown as { path: string }).path, entry.name))).size;
  }
  return total;
}

async function timed<T>(work: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const started = performance.now();
  const value = await work();
  return { ms: performance.now() - started, value };
}

/** One row of the table: what, then for this driver the median, the runs, stored MB and the comparison. */
type Row = [what: string, median: string, runs: string, stored: string, versus: string];

type BenchRepository = "dir" | "s3";

async function measure(driver: BenchDriver, repositoryType: BenchRepository): Promise<{ rows: Row[]; dbMb: string }> {
  const home = await mkdtemp(path.join(os.tmpdir(), "relevo-bench-backup-"));
  await chmod(home, 0o711);
  const s3 = repositoryType === "s3" ? await startS3ServerProcess(path.join(home, "s3rver"), "relevo-bench") : null;
  const env = s3 ? { ...process.env, ...s3Repository(s3) } : process.env;
  const config = loadConfig(env, {
    home,
    driver,
    clusterName: `bench-${driver}`,
    dockerImage: BENCH_DOCKER_IMAGE,
    apiPort: await findFreePort("127.0.0.1"),
    primaryPort: await findFreePort("127.0.0.1"),
    replicaPort: await findFreePort("127.0.0.1"),
    redisPort: await findFreePort("127.0.0.1"),
    logLevel: process.env.RELEVO_LOG_LEVEL ?? "warn",
    // Every round's backup stays in the repository (retention would expire them).
    retentionFull: ROUNDS + 1,
  });
  const service = await startRelevo(config, createLogger({ level: config.logLevel })).catch((error: unknown) => {
    s3?.stop();
    throw error;
  });
  const primary = service.nodes[0]!;
  const contenders = repositoryType === "dir";
  const superuser = { user: "postgres", password: service.secrets.superuserPassword, database: "postgres", trustedCa: service.trustedCa };
  // libpq's own variables: pgbench and psql verify the nodes as Relevo does.
  const tlsEnv = libpqTlsEnvironment(service.caFile);
  const pgEnv = { ...process.env, PGPASSWORD: service.secrets.superuserPassword, ...tlsEnv };
  try {
    process.stderr.write(`pgbench -i -s ${SCALE} (${repositoryType} repository)…\n`);
    const psql = async (node: typeof primary, query: string): Promise<string> =>
      (await run("psql", [connectionUri([node], superuser, uriTlsParameters(service.caFile)), "-Atc", query])).stdout.trim();
    const loadStartLsn = await psql(primary, "SELECT pg_current_wal_lsn()");
    const loadStarted = performance.now();
    await run("pgbench", ["-i", "-q", "-s", String(SCALE), "-h", primary.host, "-p", String(primary.port), "-U", "postgres", "postgres"], {
      env: pgEnv,
      maxBuffer: 1 << 26,
    });
    await run("psql", [connectionUri([primary], superuser, uriTlsParameters(service.caFile)), "-c", "CHECKPOINT"]);
    const dbBytes = Number(
      (
        await run("psql", [
          connectionUri([primary], superuser, uriTlsParameters(service.caFile)),
          "-Atc",
          "SELECT sum(pg_database_size(datname)) FROM pg_database",
        ])
      ).stdout.trim(),
    );

    // Let the load's aftermath finish before anything is timed: the replica
    // replaying and the archiver receiving a gigabyte of WAL would otherwise
    // slow down whichever contender goes first.
    const loadedLsn = await psql(primary, "SELECT pg_current_wal_lsn()");
    await psql(primary, "SELECT pg_switch_wal()");
    await service.archiver.waitForArchived(1, loadedLsn, loadedLsn, 600000);
    // The WAL of the load, received and pushed into the repository as it came: its rate from the load's start.
    const walPushMBs = (lsnToNumber(loadedLsn) - lsnToNumber(loadStartLsn)) / 1e6 / ((performance.now() - loadStarted) / 1000);
    for (;;) {
      if ((await psql(service.nodes[1]!, `SELECT pg_last_wal_replay_lsn() >= '${loadedLsn}'`)) === "t") break;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    await psql(primary, "CHECKPOINT");
    await run("sync", []);

    const scratch = await mkdtemp(path.join(os.tmpdir(), "relevo-bench-basebackup-"));
    const basebackup = async (label: string, extra: string[]): Promise<{ ms: number; bytes: number }> => {
      const dir = path.join(scratch, label);
      process.stderr.write(`pg_basebackup ${label}…\n`);
      const result = await timed(() =>
        run(
          "/usr/lib/postgresql/15/bin/pg_basebackup",
          [
            "-h",
            primary.host,
            "-p",
            String(primary.port),
            "-U",
            "replicator",
            "-D",
            dir,
            "-Ft",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-manifest",
            ...extra,
          ],
          { env: { ...process.env, PGPASSWORD: service.secrets.replicationPassword, ...tlsEnv } },
        ),
      );
      const bytes = await directoryBytes(dir);
      await rm(dir, { recursive: true, force: true });
      return { ms: result.ms, bytes };
    };
    // pgBackRest from Debian's packages (lz4, two processes), when installed:
    // run as the PostgreSQL OS user, reading the primary's data directory,
    // connecting over TCP (the nodes have no socket); no archive_command here,
    // so --archive-check=n (Relevo's own archive holds the WAL).
    const pgbackrest =
      contenders && driver === "local" && existsSync(PGBACKREST)
        ? await pgBackRestContender(home, service.driver.dataDirectory(primary), primary.port, service.secrets.superuserPassword, tlsEnv)
        : null;
    // Untimed first pass: every contender then reads from the same warm page cache
    // (whoever went first would otherwise pay for reading the database from disk).
    await basebackup("warm-up", []);
    const rssGrowths: number[] = [];
    let s3rverCpuMs = 0;
    let relevoMs = 0;
    // Rounds, each contender once per round, and the median of each: on a
    // small virtual machine the same work takes from one to two times as long
    // from one minute to the next; interleaving exposes every contender to
    // the same conditions.
    const relevoRuns: Array<{ ms: number; value: BackupManifest }> = [];
    const plainRuns: Array<{ ms: number; bytes: number }> = [];
    const lz4Runs: Array<{ ms: number; bytes: number }> = [];
    const gzipRuns: Array<{ ms: number; bytes: number }> = [];
    const restoreRuns: Array<{ ms: number }> = [];
    const pgbackrestRuns: Array<{ ms: number; bytes: number }> = [];
    for (let round = 1; round <= ROUNDS; round += 1) {
      process.stderr.write(`round ${round}/${ROUNDS}: relevo full backup…\n`);
      const serverBefore = (await s3?.cpuMs()) ?? 0;
      const watched = await peakRssGrowth(() => timed(async () => (await service.backups.start("full")).done));
      const backup = watched.result;
      rssGrowths.push(watched.growthMiB);
      relevoRuns.push(backup);
      // The reference point (table checksums) is recorded after the backup: not timed, not overlapping the others.
      await service.backups.waitForIdle();
      if (contenders) {
        plainRuns.push(await basebackup("plain", []));
        lz4Runs.push(await basebackup("lz4", ["--compress=client-lz4"]));
        gzipRuns.push(await basebackup("gzip-1", ["--compress=client-gzip:1"]));
      }
      if (pgbackrest) pgbackrestRuns.push(await pgbackrest.backup("full"));
      process.stderr.write(`round ${round}/${ROUNDS}: relevo restore…\n`);
      const target = { name: `bench-restore-${round}`, host: primary.host, port: await findFreePort(primary.host) };
      const serverBeforeRestore = (await s3?.cpuMs()) ?? 0;
      restoreRuns.push(
        await timed(() => service.backups.restore({ backupId: backup.value.id, target, recoveryTarget: { kind: "immediate" } })),
      );
      if (s3) s3rverCpuMs += (await s3.cpuMs()) - serverBeforeRestore + (serverBeforeRestore - serverBefore);
      relevoMs += backup.ms + restoreRuns[restoreRuns.length - 1]!.ms;
      await service.driver.destroy(target);
    }
    await rm(scratch, { recursive: true, force: true });

    // Block-level: a contiguous 1% of pgbench_accounts updated, then a
    // differential (on the last round's full); another 1%, then an
    // incremental (on the differential); the chain restored.
    const onePercent = SCALE * 1000;
    const blockLevel = async (type: "differential" | "incremental", firstAid: number) => {
      await psql(
        primary,
        `UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN ${firstAid} AND ${firstAid + onePercent - 1}`,
      );
      // The update's WAL archived and summarised first, as it is by the time
      // a scheduled backup runs (the summariser works as segments arrive).
      const updatedLsn = await psql(primary, "SELECT pg_current_wal_lsn()");
      const lastComplete = segmentStartLsn(segmentNumber(updatedLsn) - 1);
      await service.archiver.waitForArchived(1, lastComplete, lastComplete, 600000);
      await new Promise((resolve) => setTimeout(resolve, 2000));
      await service.walSummarizer.summarizePending();
      process.stderr.write(`relevo ${type}…\n`);
      const taken = await timed(async () => (await service.backups.start(type)).done);
      await service.backups.waitForIdle();
      const contender = pgbackrest ? await pgbackrest.backup(type === "differential" ? "diff" : "incr") : null;
      return { taken, contender };
    };
    const differential = await blockLevel("differential", 1);
    const incremental = await blockLevel("incremental", 50 * onePercent + 1);
    process.stderr.write("relevo restore of the chain…\n");
    const chainTarget = { name: "bench-restore-chain", host: primary.host, port: await findFreePort(primary.host) };
    const chainRestore = await timed(() =>
      service.backups.restore({ backupId: incremental.taken.value.id, target: chainTarget, recoveryTarget: { kind: "immediate" } }),
    );
    await service.driver.destroy(chainTarget);

    const relevo = median(relevoRuns);
    // Without the contenders (the S3 column), ratios are to the directory's column (see main).
    const plain = plainRuns.length > 0 ? median(plainRuns) : { ms: Number.NaN, bytes: 0 };
    const lz4 = lz4Runs.length > 0 ? median(lz4Runs) : null;
    const gzip1 = gzipRuns.length > 0 ? median(gzipRuns) : null;
    const restore = median(restoreRuns);
    const spread = (runs: Array<{ ms: number }>): string => runs.map((run) => (run.ms / 1000).toFixed(1)).join(" / ");

    const mb = (bytes: number): string => (bytes / 1024 / 1024).toFixed(0);
    const s = (ms: number): string => (ms / 1000).toFixed(1);
    const rows: Row[] = [
      [
        `relevo full backup (${config.backupCompression}, ${config.backupParallelism} workers)`,
        s(relevo.ms),
        spread(relevoRuns),
        mb(relevo.value.storedBytes),
        (relevo.ms / plain.ms).toFixed(2),
      ],
      ...(contenders && lz4 && gzip1
        ? ([
            ["pg_basebackup -Ft -X stream", s(plain.ms), spread(plainRuns), mb(plain.bytes), "1.00"],
            ["pg_basebackup -Ft -X stream, client-lz4", s(lz4.ms), spread(lz4Runs), mb(lz4.bytes), (lz4.ms / plain.ms).toFixed(2)],
            [
              "pg_basebackup -Ft -X stream, client-gzip:1",
              s(gzip1.ms),
              spread(gzipRuns),
              mb(gzip1.bytes),
              (gzip1.ms / plain.ms).toFixed(2),
            ],
          ] as Row[])
        : []),
      ...(pgbackrestRuns.length > 0
        ? [
            [
              "pgBackRest 2.45 full, lz4, process-max 2",
              s(median(pgbackrestRuns).ms),
              spread(pgbackrestRuns),
              mb(median(pgbackrestRuns).bytes),
              (median(pgbackrestRuns).ms / plain.ms).toFixed(2),
            ] as Row,
          ]
        : contenders
          ? [["pgBackRest 2.45 full, lz4, process-max 2", "-", driver === "local" ? "not installed" : "(local only)", "-", "-"] as Row]
          : []),
      [
        "relevo restore (to consistency, promoted)",
        s(restore.ms),
        spread(restoreRuns),
        "-",
        `${(restore.ms / relevo.ms).toFixed(2)}x backup`,
      ],
    ];
    // Each block-level backup as a fraction of the full it is compared with (time, stored bytes).
    const fullBytes = relevo.value.storedBytes;
    const fraction = (ms: number, bytes: number, full: { ms: number; bytes: number }): string =>
      `${((100 * ms) / full.ms).toFixed(0)}% time, ${((100 * bytes) / full.bytes).toFixed(1)}% bytes of full`;
    const pgbackrestFull = pgbackrestRuns.length > 0 ? median(pgbackrestRuns) : null;
    for (const [label, result] of [
      ["differential", differential],
      ["incremental", incremental],
    ] as const) {
      const manifest = result.taken.value;
      rows.push([
        // The same label on every driver (one row); what was stored goes in the runs column.
        `relevo ${label} (1% updated)`,
        s(result.taken.ms),
        `${manifest.blocksStored} blocks, ${manifest.filesStored} files, ${manifest.changesFrom}`,
        (manifest.storedBytes / 1024 / 1024).toFixed(1),
        fraction(result.taken.ms, manifest.storedBytes, { ms: relevo.ms, bytes: fullBytes }),
      ]);
      if (result.contender && pgbackrestFull) {
        rows.push([
          `pgBackRest 2.45 ${label} (1% updated)`,
          s(result.contender.ms),
          "-",
          (result.contender.bytes / 1024 / 1024).toFixed(1),
          fraction(result.contender.ms, result.contender.bytes, pgbackrestFull),
        ]);
      }
    }
    rows.push([
      "relevo restore of full + differential + incremental",
      s(chainRestore.ms),
      "-",
      "-",
      `${(chainRestore.ms / relevo.ms).toFixed(2)}x full backup`,
    ]);
    rows.push(["relevo WAL pushed during pgbench -i (MB/s)", walPushMBs.toFixed(0), "-", "-", "-"]);
    rows.push([
      "relevo full backup: peak growth of the service's RSS (MiB)",
      median(rssGrowths.map((growth) => ({ ms: growth }))).ms.toFixed(0),
      rssGrowths.map((growth) => growth.toFixed(0)).join(" / "),
      "-",
      "-",
    ]);
    if (s3)
      rows.push([
        "s3rver's CPU time / Relevo's full backups and restores' time",
        `${((100 * s3rverCpuMs) / relevoMs).toFixed(0)}%`,
        "-",
        "-",
        "-",
      ]);
    return { rows, dbMb: mb(dbBytes) };
  } finally {
    await service.stop({ reason: "benchmark finished" });
    s3?.stop();
    // Four copies of a 1 GB database: kept only when asked (BENCH_KEEP=1); containers and volumes with them.
    if (process.env.BENCH_KEEP !== "1") {
      for (const member of service.nodes) await service.driver.destroy(member).catch(() => undefined);
      await rm(home, { recursive: true, force: true });
    }
  }
}

/** Repository 1 in the benchmark's s3rver bucket, as an operator would set it. */
function s3Repository(server: S3ServerProcess): Record<string, string> {
  return {
    RELEVO_REPO1_TYPE: "s3",
    RELEVO_REPO1_S3_BUCKET: "relevo-bench",
    RELEVO_REPO1_S3_ENDPOINT: `http://127.0.0.1:${server.port}`,
    RELEVO_REPO1_S3_URI_STYLE: "path",
    RELEVO_REPO1_S3_PREFIX: "bench/",
    RELEVO_REPO1_S3_ACCESS_KEY_ID: "S3RVER",
    RELEVO_REPO1_S3_SECRET_ACCESS_KEY: "S3RVER",
    AWS_EC2_METADATA_DISABLED: "true",
  };
}

async function main(): Promise<void> {
  const repositories = (process.env.BENCH_REPOSITORIES ?? "dir,s3").split(",").map((name) => name.trim()) as BenchRepository[];
  const byDriver = await measureOnEachDriver((driver) => measure(driver, repositories[0] ?? "dir"));
  const results: Array<{ column: string; rows: Row[]; dbMb: string }> = byDriver.map((result) => ({ ...result, column: result.driver }));
  // The S3 column: the first driver's cluster again, its repository in a bucket; ratios to the directory's.
  const first = byDriver[0];
  if (first && repositories.includes("s3") && repositories[0] !== "s3") {
    process.stderr.write(`--- ${first.driver} driver, repository 1 in S3 (s3rver)\n`);
    const measured = await measure(first.driver, "s3");
    const rows = measured.rows.map((row): Row => {
      const directory = first.rows.find((candidate) => candidate[0] === row[0]);
      const ratio = directory && Number(directory[1]) > 0 ? `${(Number(row[1]) / Number(directory[1])).toFixed(2)}x dir` : row[4];
      return [row[0], row[1], row[2], row[3], ratio];
    });
    results.push({ column: `${first.driver} s3`, rows, dbMb: measured.dbMb });
  }
  // Rows by what they measure (a row one column lacks shows "-" for it).
  const whats = [...new Set(results.flatMap((result) => result.rows.map((row) => row[0])))];
  const header = [
    "what",
    ...results.flatMap(({ column }) => [`${column} median (s)`, `${column} runs (s)`, `${column} stored (MB)`, `${column} vs`]),
  ];
  const rows = whats.map((what) => [
    what,
    ...results.flatMap((result) => {
      const row = result.rows.find((candidate) => candidate[0] === what);
      return row ? row.slice(1) : ["-", "-", "-", "-"];
    }),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(" | ")} |`;
  process.stdout.write(
    `\nbench/backup: pgbench scale ${SCALE}, databases ${results.map((r) => `${r.dbMb} MB (${r.column})`).join(", ")}, ${os.cpus().length} cores, ${new Date().toISOString().slice(0, 10)}\n\n`,
  );
  process.stdout.write(`${line(header)}\n${line(widths.map((w) => "-".repeat(w)))}\n${rows.map(line).join("\n")}\n`);
}

main().catch((error) => {
  process.stderr.write(`${(error as Error).stack}\n`);
  process.exitCode = 1;
});
