import type { TrustAnchors } from "../../src/postgres/connection";
/**
 * bench/failover: a two-node cluster with the default settings (synchronous,
 * checks every 1000 ms, 3 missed checks), a writer inserting through a
 * multi-host libpq string (target_session_attrs=read-write) all along.
 * BENCH_RUNS (default 5) times each:
 * - kill -9 of the primary's processes: time to promotion, time to the first
 *   acknowledged write after the kill, acknowledged rows lost (the old
 *   primary then rejoins by itself before the next run, which kills the other
 *   node);
 * - switchover to the replica, then failback to node1: the longest time
 *   between two acknowledged writes around each (the write gap);
 * and counts failovers that nobody caused (false failovers).
 * Once per driver (BENCH_DRIVERS, default "local,docker"; on Docker the nodes
 * are containers of BENCH_DOCKER_IMAGE, default relevo-test/postgres:15, and
 * "kill -9" is docker kill), one column pair each.
 * Targets: median kill → first write under 5 s; switchover and failback gap
 * under 1 s; no false failover; no acknowledged row lost.
 * Run: npm run build && npm run bench:failover
 */
import "reflect-metadata";
import { BENCH_DOCKER_IMAGE, measureOnEachDriver, type BenchDriver } from "../drivers";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Client } from "pg";
import { findFreePort } from "../../src/util/ports";
import { loadConfig } from "../../src/config/config";
import { createLogger } from "../../src/log";
import type { NodeRef } from "../../src/nodes/node-driver";
import { startRelevo, type RelevoService } from "../../src/service";
import { startLibpqWriter, type WriterReport } from "./libpq-writer";

const RUNS = Number(process.env.BENCH_RUNS ?? 5);

async function until<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 120000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await check().catch(() => undefined);
    if (value !== undefined) return value;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function sql<T>(node: NodeRef, access: { password: string; trustedCa: TrustAnchors }, text: string): Promise<T[]> {
  const client = new Client({
    host: node.host,
    port: node.port,
    user: "postgres",
    password: access.password,
    database: "postgres",
    connectionTimeoutMillis: 3000,
    ssl: { ca: access.trustedCa.pem, rejectUnauthorized: true },
  });
  await client.connect();
  try {
    return (await client.query(text)).rows as T[];
  } finally {
    await client.end();
  }
}

/** Longest time between two acknowledged writes that spans `from`..`to` (the operation's window). */
function gapAround(report: WriterReport, from: number, to: number): number {
  let longest = 0;
  for (let i = 1; i < report.ackTimes.length; i += 1) {
    const [before, after] = [report.ackTimes[i - 1]!, report.ackTimes[i]!];
    if (after >= from && before <= to) longest = Math.max(longest, after - before);
  }
  return longest;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

async function settled(service: RelevoService, replica: string): Promise<string> {
  return until(`${replica} back in sync`, async () => {
    const state = await service.failover.state();
    const busy = await service.failover.operation();
    return state && !busy && state.fenced.length === 0 && state.eligible.includes(replica) ? state.primary : undefined;
  });
}

type Row = [metric: string, median: string, max: string, target: string];

async function measure(driver: BenchDriver): Promise<{ rows: Row[]; checks: string }> {
  const home = await mkdtemp(path.join(os.tmpdir(), "relevo-bench-failover-"));
  await chmod(home, 0o755); // the PostgreSQL OS user must traverse it
  const config = loadConfig(process.env, {
    home,
    clusterName: `bench-${driver}`,
    driver,
    dockerImage: BENCH_DOCKER_IMAGE,
    apiPort: await findFreePort("127.0.0.1"),
    primaryPort: await findFreePort("127.0.0.1"),
    replicaPort: await findFreePort("127.0.0.1"),
    redisPort: await findFreePort("127.0.0.1"),
    scheduleFullBackup: "off",
    scheduleDifferentialBackup: "off",
    scheduleIncrementalBackup: "off",
    scheduleVerify: "off",
    logLevel: process.env.BENCH_LOG_LEVEL ?? "silent",
  });
  const service = await startRelevo(config, createLogger({ level: config.logLevel }));
  const password = { password: service.secrets.superuserPassword, trustedCa: service.trustedCa };
  const node = (name: string): NodeRef => service.nodes.find((n) => n.name === name)!;
  const kills: Array<{ promotionMs: number; firstWriteMs: number; lost: number; acknowledged: number }> = [];
  const gaps = { switchover: [] as number[], failback: [] as number[] };
  const lostInPlanned: number[] = [];
  const started = Date.now();
  let caused = 0;
  try {
    await sql(node("node1"), password, "CREATE TABLE acked (id int PRIMARY KEY, at timestamptz DEFAULT now())");
    for (let run = 1; run <= RUNS; run += 1) {
      const primary = await settled(service, run % 2 === 1 ? "node2" : "node1");
      const replica = primary === "node1" ? "node2" : "node1";
      await sql(node(primary), password, "TRUNCATE acked");
      const writer = startLibpqWriter(service);
      await new Promise((resolve) => setTimeout(resolve, 2000));
      const killedAt = Date.now();
      await service.driver.kill(node(primary));
      caused += 1;
      await until("a new primary", async () =>
        (await service.failover.state())?.primary === replica && !(await service.failover.operation()) ? true : undefined,
      );
      const acknowledgedAt = writer.acknowledgedSoFar();
      await until("writes on the new primary", () => Promise.resolve(writer.acknowledgedSoFar() > acknowledgedAt + 20 ? true : undefined));
      const report = await writer.stop();
      const [record] = await service.failover.failovers(1);
      const present = new Set((await sql<{ id: number }>(node(replica), password, "SELECT id FROM acked")).map((row) => row.id));
      kills.push({
        promotionMs: Date.parse(record!.promotedAt!) - killedAt,
        // The first write that began after the kill (one sent just before may be acknowledged just after).
        firstWriteMs: report.ackTimes[report.ackStarts.findIndex((time) => time > killedAt)]! - killedAt,
        lost: report.acknowledged.filter((id) => !present.has(id)).length,
        acknowledged: report.acknowledged.length,
      });
      process.stderr.write(`kill run ${run}: ${JSON.stringify(kills[kills.length - 1])}\n`);
    }
    // Planned changes start from node1 as the primary: a switchover to node2, then the failback to node1.
    if ((await settled(service, (await service.failover.state())!.primary === "node1" ? "node2" : "node1")) !== "node1") {
      await service.failover.failback();
      caused += 1;
    }
    for (let run = 1; run <= RUNS; run += 1) {
      for (const kind of ["switchover", "failback"] as const) {
        const primary = await settled(service, kind === "switchover" ? "node2" : "node1");
        const target = primary === "node1" ? "node2" : "node1";
        await sql(node(primary), password, "TRUNCATE acked");
        const writer = startLibpqWriter(service);
        await new Promise((resolve) => setTimeout(resolve, 1000));
        const from = Date.now();
        if (kind === "switchover") await service.failover.switchover(target);
        else await service.failover.failback();
        caused += 1;
        const to = Date.now();
        await new Promise((resolve) => setTimeout(resolve, 1000));
        const report = await writer.stop();
        const present = new Set((await sql<{ id: number }>(node(target), password, "SELECT id FROM acked")).map((row) => row.id));
        lostInPlanned.push(report.acknowledged.filter((id) => !present.has(id)).length);
        gaps[kind].push(gapAround(report, from, to));
        process.stderr.write(`${kind} run ${run}: gap ${gaps[kind][gaps[kind].length - 1]} ms, operation ${to - from} ms\n`);
      }
    }
    const all = await service.failover.failovers(200);
    const falseFailovers = all.filter((record) => Date.parse(record.startedAt) >= started).length - caused;
    const rows: Row[] = [
      [
        "kill -9 → promoted (ms)",
        String(median(kills.map((k) => k.promotionMs))),
        String(Math.max(...kills.map((k) => k.promotionMs))),
        "—",
      ],
      [
        "kill -9 → first write (ms)",
        String(median(kills.map((k) => k.firstWriteMs))),
        String(Math.max(...kills.map((k) => k.firstWriteMs))),
        "median < 5000",
      ],
      [
        "acknowledged rows lost (kill -9)",
        String(kills.reduce((sum, k) => sum + k.lost, 0)),
        `of ${kills.reduce((sum, k) => sum + k.acknowledged, 0)}`,
        "0",
      ],
      ["switchover write gap (ms)", String(median(gaps.switchover)), String(Math.max(...gaps.switchover)), "< 1000"],
      ["failback write gap (ms)", String(median(gaps.failback)), String(Math.max(...gaps.failback)), "< 1000"],
      ["acknowledged rows lost (planned)", String(lostInPlanned.reduce((a, b) => a + b, 0)), "—", "0"],
      ["false failovers", String(falseFailovers), "—", "0"],
    ];
    return { rows, checks: `check interval ${config.failoverCheckIntervalMs} ms × ${config.failoverFailureThreshold}` };
  } finally {
    await service.stop({ reason: "benchmark finished" });
    // Containers and volumes too (docker): nothing of a benchmark outlives it.
    for (const member of service.nodes) await service.driver.destroy(member).catch(() => undefined);
    await rm(home, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const results = await measureOnEachDriver(measure);
  const header = ["metric", ...results.flatMap((result) => [`${result.driver} median`, `${result.driver} max`]), "target"];
  const widths = header.map((title, i) => Math.max(title.length, i === 0 ? 34 : 10));
  const line = (cells: string[]) => `| ${cells.map((cell, i) => cell.padEnd(widths[i]!)).join(" | ")} |`;
  console.log(`\nbench/failover: ${RUNS} runs each, synchronous, 2 nodes, ${results[0]?.checks ?? ""}`);
  console.log(line(header));
  console.log(line(widths.map((width) => "-".repeat(width))));
  for (const [index, row] of (results[0]?.rows ?? []).entries()) {
    console.log(line([row[0], ...results.flatMap((result) => [result.rows[index]![1], result.rows[index]![2]]), row[3]]));
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
