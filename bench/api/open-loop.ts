import http from "node:http";

export interface OpenLoopOptions {
  readonly url: string;
  readonly headers: Record<string, string>;
  readonly body: string;
  readonly ratePerSecond: number;
  readonly durationMs: number;
  readonly timeoutMs?: number;
}

export interface OpenLoopResult {
  readonly sent: number;
  readonly completed: number;
  readonly errors: number;
  readonly non2xx: number;
  readonly timeouts: number;
  /** Milliseconds from sending a request to the end of its response. */
  readonly latencies: Float64Array;
  /** Milliseconds each request left after it was due (the generator's own jitter, reported apart). */
  readonly sendLag: Float64Array;
  readonly elapsedMs: number;
}

/**
 * A fixed-rate (open-loop) HTTP load: request i is due at i / rate seconds,
 * whether or not earlier ones have answered (a slow answer never delays the
 * next request), and its latency counts from when it was sent; how late the
 * generator itself sent it is reported apart. (autocannon's `overallRate` lets each connection send its whole
 * per-second quota back to back and then wait for the next second, which is
 * a burst every second, not a fixed rate.)
 */
export async function runOpenLoop(options: OpenLoopOptions): Promise<OpenLoopResult> {
  const target = new URL(options.url);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const total = Math.round((options.ratePerSecond * options.durationMs) / 1000);
  const latencies = new Float64Array(total);
  const sendLag = new Float64Array(total);
  let completed = 0;
  let errors = 0;
  let non2xx = 0;
  let timeouts = 0;
  let sent = 0;
  const bodyLength = Buffer.byteLength(options.body);
  const start = performance.now();
  const intervalMs = 1000 / options.ratePerSecond;

  const fire = (index: number, dueAt: number): void => {
    const sentAt = performance.now();
    sendLag[index] = sentAt - dueAt;
    const request = http.request(
      {
        host: target.hostname,
        port: target.port,
        path: target.pathname,
        method: "POST",
        agent,
        headers: { ...options.headers, "content-length": bodyLength },
        timeout: options.timeoutMs ?? 10000,
      },
      (response) => {
        response.on("data", () => undefined);
        response.on("end", () => {
          latencies[index] = performance.now() - sentAt;
          if ((response.statusCode ?? 0) < 200 || (response.statusCode ?? 0) >= 300) non2xx += 1;
          completed += 1;
        });
      },
    );
    request.on("timeout", () => {
      timeouts += 1;
      request.destroy();
    });
    request.on("error", () => {
      latencies[index] = performance.now() - sentAt;
      errors += 1;
      completed += 1;
    });
    request.end(options.body);
  };

  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const now = performance.now();
      while (sent < total && start + sent * intervalMs <= now) {
        fire(sent, start + sent * intervalMs);
        sent += 1;
      }
      // A 1 ms timer, not a busy loop: the generator must leave the CPU to the server.
      if (sent < total) setTimeout(tick, 1);
      else resolve();
    };
    tick();
  });
  const deadline = performance.now() + (options.timeoutMs ?? 10000) + 1000;
  while (completed + timeouts < total && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
  agent.destroy();
  return { sent, completed, errors, non2xx, timeouts, latencies, sendLag, elapsedMs: performance.now() - start };
}

export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}
