/**
 * bench/api: the `cluster` query at a fixed 1000 requests/s for 20 s on
 * loopback, against a real embedded cluster (2 PostgreSQL nodes, Redis, the
 * API), with a viewer token. Prints p50/p99 latency and errors as a table.
 * Target: p99 ≤ 5 ms, 0 errors. Run: npm run bench:api
 */
import "reflect-metadata";
import { chmod, mkdtemp } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { spawn, type ChildProcess } from "node:child_process";
import { findFreePort } from "../../src/util/ports";
import { projectRoot } from "../../src/util/project-root";
import { percentile, runOpenLoop, type OpenLoopResult } from "./open-loop";

const RATE = Number(process.env.BENCH_RATE ?? 1000);
const DURATION_S = Number(process.env.BENCH_DURATION_S ?? 20);
const SETTLE_MS = Number(process.env.BENCH_SETTLE_MS ?? 10000);
const QUERY =
  "{ cluster { name primary { name } nodes { name role reachable host port replication { state lagBytes replayLagSeconds } } } }";

/**
 * The service runs as `relevo up` in a process of its own, as in production;
 * the load generator here must not share its event loop.
 */
async function startService(env: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; url: string; token: string }> {
  const child = spawn(process.execPath, [path.join(projectRoot(), "bin/relevo"), "up"], { env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
  const deadline = Date.now() + 120000;
  while (!/Operator token:\s+\S+/.test(output)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`relevo up did not start: ${output}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return { child, url: /GraphQL and GraphiQL:\s+(\S+)/.exec(output)![1]!, token: /Operator token:\s+(\S+)/.exec(output)![1]! };
}

/**
 * The machine's floor: the same load against a bare node:http server (in a
 * process of its own) that answers every request with the bytes Relevo
 * answered. Whatever latency this shows is the machine's, not Relevo's.
 */
async function startBareServer(port: number, responseBody: string): Promise<ChildProcess> {
  const script = `require("http").createServer((q,r)=>{q.resume();q.on("end",()=>{r.setHeader("content-type","application/json; charset=utf-8");r.end(process.env.BODY)})}).listen(${port},"127.0.0.1",()=>console.log("ready"))`;
  const child = spawn(process.execPath, ["-e", script], { env: { BODY: responseBody }, stdio: ["ignore", "pipe", "inherit"] });
  await new Promise<void>((resolve) => child.stdout.once("data", () => resolve()));
  return child;
}

async function stopChild(child: ChildProcess): Promise<void> {
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGTERM");
  await exited;
}

interface Measured {
  readonly result: OpenLoopResult;
  readonly sorted: Float64Array;
}

async function measure(url: string, headers: Record<string, string>, body: string): Promise<Measured> {
  // A cluster just made by initdb and pg_basebackup still checkpoints and
  // vacuums for a few seconds: let it settle, then warm up JIT and caches.
  await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
  await runOpenLoop({ url, headers, body, ratePerSecond: RATE, durationMs: 5000 });
  const result = await runOpenLoop({ url, headers, body, ratePerSecond: RATE, durationMs: DURATION_S * 1000 });
  return { result, sorted: result.latencies.slice(0, result.completed).sort() };
}

async function main(): Promise<void> {
  const home = await mkdtemp(path.join(os.tmpdir(), "relevo-bench-api-"));
  await chmod(home, 0o711);
  const env = {
    ...process.env,
    RELEVO_HOME: home,
    RELEVO_API_PORT: String(await findFreePort("127.0.0.1")),
    RELEVO_PRIMARY_PORT: String(await findFreePort("127.0.0.1")),
    RELEVO_REPLICA_PORT: String(await findFreePort("127.0.0.1")),
    RELEVO_REDIS_PORT: String(await findFreePort("127.0.0.1")),
    RELEVO_LOG_LEVEL: "warn",
    // One token sends the whole load: its rate limit (checked in Redis on every request) stays on, above the rate sent.
    RELEVO_API_RATE_LIMIT_PER_SECOND: String(RATE * 2),
    RELEVO_API_RATE_LIMIT_BURST: String(RATE * 2),
  };
  const body = JSON.stringify({ query: QUERY });
  const service = await startService(env);
  let relevo: Measured;
  let sample: string;
  try {
    const headers = { "content-type": "application/json", authorization: `Bearer ${service.token}` };
    sample = await (await fetch(service.url, { method: "POST", headers, body })).text();
    relevo = await measure(service.url, headers, body);
  } finally {
    await stopChild(service.child);
  }
  const barePort = await findFreePort("127.0.0.1");
  const bare = await startBareServer(barePort, sample);
  let floor: Measured;
  try {
    floor = await measure(`http://127.0.0.1:${barePort}/graphql`, { "content-type": "application/json" }, body);
  } finally {
    await stopChild(bare);
  }

  const ms = (value: number): string => value.toFixed(2);
  const failures = (m: Measured): number => m.result.errors + m.result.timeouts + m.result.non2xx;
  const rows: Array<[string, (m: Measured) => string]> = [
    ["requests sent", (m) => String(m.result.sent)],
    ["achieved rate (req/s)", (m) => (m.result.completed / DURATION_S).toFixed(0)],
    ["latency p50 (ms)", (m) => ms(percentile(m.sorted, 50))],
    ["latency p90 (ms)", (m) => ms(percentile(m.sorted, 90))],
    ["latency p99 (ms)", (m) => ms(percentile(m.sorted, 99))],
    ["latency p99.9 (ms)", (m) => ms(percentile(m.sorted, 99.9))],
    ["latency max (ms)", (m) => ms(m.sorted[m.sorted.length - 1] ?? NaN)],
    ["generator send lag p99 (ms)", (m) => ms(percentile(m.result.sendLag.slice().sort(), 99))],
    ["errors + timeouts + non-2xx", (m) => String(failures(m))],
    ["target met (p99 <= 5 ms, 0 errors)", (m) => (percentile(m.sorted, 99) <= 5 && failures(m) === 0 ? "yes" : "NO")],
  ];
  const width = Math.max(...rows.map(([name]) => name.length));
  const out = (line: string): boolean => process.stdout.write(`${line}\n`);
  out(`\nbench/api: the cluster query at ${RATE} req/s for ${DURATION_S} s, ${os.cpus().length} cores, Node ${process.version}\n`);
  out(`| ${"metric".padEnd(width)} | relevo (relevo up) | floor (bare node:http, same bytes) |`);
  out(`| ${"-".repeat(width)} | ------------------ | ---------------------------------- |`);
  for (const [name, value] of rows) out(`| ${name.padEnd(width)} | ${value(relevo).padEnd(18)} | ${value(floor).padEnd(34)} |`);
}

main().catch((error) => {
  process.stderr.write(`${(error as Error).stack}\n`);
  process.exitCode = 1;
});
