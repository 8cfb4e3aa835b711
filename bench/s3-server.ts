/**
 * What the benchmarks share about s3rver: it runs in a process of its own
 * (bench/repository/s3-server-process.ts), so that its CPU time is its own
 * and the benchmark's memory Relevo's alone; and the growth of this
 * process's RSS while some work runs.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import path from "node:path";

export interface S3ServerProcess {
  readonly port: number;
  readonly pid: number;
  /** CPU time (user + system, ms) it has used so far, from /proc. */
  cpuMs(): Promise<number>;
  stop(): void;
}

/** s3rver on a free loopback port with `bucket` made, its objects under `directory`. */
export async function startS3ServerProcess(directory: string, bucket: string): Promise<S3ServerProcess> {
  const server = spawn(process.execPath, [path.join(__dirname, "repository", "s3-server-process.js"), directory, bucket], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const [line] = (await once(server.stdout, "data")) as [Buffer];
  const pid = server.pid!;
  return {
    port: Number(line.toString().trim()),
    pid,
    cpuMs: () => cpuMs(pid),
    stop: () => void server.kill("SIGKILL"),
  };
}

/** CPU time (user + system, ms) a process has used so far, from /proc. */
export async function cpuMs(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1]!.split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // utime, stime in clock ticks (USER_HZ 100)
}

/** The largest growth of this process's RSS over its value at the start, sampled every 20 ms while `work` runs. */
export async function peakRssGrowth<T>(work: () => Promise<T>): Promise<{ result: T; growthMiB: number; ms: number }> {
  global.gc?.();
  const base = process.memoryUsage.rss();
  let peak = base;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 20);
  const started = performance.now();
  try {
    const result = await work();
    peak = Math.max(peak, process.memoryUsage.rss());
    return { result, growthMiB: (peak - base) / (1024 * 1024), ms: performance.now() - started };
  } finally {
    clearInterval(timer);
  }
}
