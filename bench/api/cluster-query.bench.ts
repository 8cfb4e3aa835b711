/**
 * bench/api: the `cluster` query at a fixed 1000 requests/s for 20 s on
 * loopback, against a real embedded cluster (2 PostgreSQL nodes, Redis, the
 * API), with a viewer token. Prints p50/p99 latency and errors as a table.
 * Target: p99 ≤ 5 ms, 0 errors. Run: npm run bench:api
 */
import "reflect-metadata";
import { chmod, mkdtemp } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { spawn, type ChildProcess } from "node:child_process";
import { projectRoot } from "../../src/util/project-root";

import { percentile, runOpenLoop } from "./open-loop";

const RATE = Number(process.env.BENCH_RATE ?? 1000);
const DURATION_S = Number(process.env.BENCH_DURATION_S ?? 20);
const QUERY = "{ cluster { name primary { name } nodes { name role reachable host port replication { state lagBytes replayLagSeconds } } } }";

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

/**
 * The service runs as `relevo up` in a process of its own, as in production;
 * the load generator here must not share its event loop.
 */
async function startService(env: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; url: string; token: string }> {
  const child = spawn(process.execPath, [path.join(projectRoot(), "bin/relevo"), "up"], { env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout!.on("data", (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString()));
  const deadline = Date.now() + 120000;
  while (!/Operator token:\s+\S+/.test(output)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`relevo up did not start: ${output}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return { child, url: /GraphQL and GraphiQL:\s+(\S+)/.exec(output)![1]!, token: /Operator token:\s+(\S+)/.exec(output)![1]! };
}

async function main(): Promise<void> {
  const home = await mkdtemp(path.join(os.tmpdir(), "relevo-bench-api-"));
  await chmod(home, 0o711);
  const env = {
    ...process.env,
    RELEVO_HOME: home,
    RELEVO_API_PORT: String(await freePort()),
    RELEVO_PRIMARY_PORT: String(await freePort()),
    RELEVO_REPLICA_PORT: String(await freePort()),
    RELEVO_REDIS_PORT: String(await freePort()),
    RELEVO_LOG_LEVEL: "warn",
  };
  const service = await startService(env);
  try {
    const request = {
      url: service.url,
      headers: { "content-type": "application/json", authorization: `Bearer ${service.token}` },
      body: JSON.stringify({ query: QUERY }),
    };
    await runOpenLoop({ ...request, ratePerSecond: RATE, durationMs: 3000 }); // warm-up: JIT, caches, pools
    const result = await runOpenLoop({ ...request, ratePerSecond: RATE, durationMs: DURATION_S * 1000 });
    const sorted = result.latencies.slice(0, result.completed).sort();
    const ms = (value: number): string => value.toFixed(2);
    const failures = result.errors + result.timeouts + result.non2xx + (result.sent - result.completed - result.timeouts);
    const rows: Array<[string, string]> = [
      ["target rate (req/s)", String(RATE)],
      ["duration (s)", String(DURATION_S)],
      ["requests sent", String(result.sent)],
      ["achieved rate (req/s)", (result.completed / (DURATION_S)).toFixed(0)],
      ["latency p50 (ms)", ms(percentile(sorted, 50))],
      ["latency p90 (ms)", ms(percentile(sorted, 90))],
      ["latency p99 (ms)", ms(percentile(sorted, 99))],
      ["latency p99.9 (ms)", ms(percentile(sorted, 99.9))],
      ["latency max (ms)", ms(sorted[sorted.length - 1] ?? NaN)],
      ["generator send lag p99 (ms)", ms(percentile(result.sendLag.slice().sort(), 99))],
      ["errors", String(result.errors)],
      ["timeouts", String(result.timeouts)],
      ["non-2xx responses", String(result.non2xx)],
      ["target met (p99 <= 5 ms, 0 errors)", percentile(sorted, 99) <= 5 && failures === 0 ? "yes" : "NO"],
    ];
    const width = Math.max(...rows.map(([name]) => name.length));
    process.stdout.write(`\nbench/api: cluster query, ${os.cpus().length} cores, Node ${process.version}\n\n`);
    process.stdout.write(`| ${"metric".padEnd(width)} | value |\n| ${"-".repeat(width)} | ----- |\n`);
    for (const [name, value] of rows) process.stdout.write(`| ${name.padEnd(width)} | ${value} |\n`);
  } finally {
    const exited = new Promise((resolve) => service.child.once("exit", resolve));
    service.child.kill("SIGTERM");
    await exited;
  }
}

main().catch((error) => {
  process.stderr.write(`${(error as Error).stack}\n`);
  process.exitCode = 1;
});
