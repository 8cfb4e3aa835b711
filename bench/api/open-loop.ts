import net from "node:net";

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

interface Pending {
  readonly index: number;
  readonly sentAt: number;
}

/**
 * One keep-alive HTTP/1.1 connection that carries one request at a time and
 * parses just enough of the answer (status, Content-Length or chunked end).
 * Node's http client costs about half a millisecond of CPU per request on
 * this machine kind, which the generator cannot afford while sharing two
 * cores with the server it measures.
 */
class Connection {
  private readonly socket: net.Socket;
  private buffer: Buffer = Buffer.alloc(0);
  pending: Pending | null = null;
  broken = false;

  constructor(
    host: string,
    port: number,
    private readonly onDone: (connection: Connection, pending: Pending, status: number) => void,
    private readonly onError: (connection: Connection, pending: Pending | null) => void,
  ) {
    this.socket = net.connect({ host, port, noDelay: true });
    this.socket.on("data", (chunk: Buffer) => this.onData(chunk));
    this.socket.on("error", () => this.fail());
    this.socket.on("close", () => this.fail());
  }

  send(request: Buffer, pending: Pending): void {
    this.pending = pending;
    this.socket.write(request);
  }

  close(): void {
    this.socket.destroy();
  }

  private fail(): void {
    if (this.broken) return;
    this.broken = true;
    const pending = this.pending;
    this.pending = null;
    this.onError(this, pending);
  }

  private onData(chunk: Buffer): void {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    const headerEnd = this.buffer.indexOf("\r\n\r\n");
    if (headerEnd < 0 || !this.pending) return;
    const head = this.buffer.subarray(0, headerEnd).toString("latin1");
    const status = Number(head.slice(9, 12));
    const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    let end: number;
    if (length) {
      end = headerEnd + 4 + Number(length[1]);
      if (this.buffer.length < end) return;
    } else {
      const terminator = this.buffer.indexOf("\r\n0\r\n\r\n", headerEnd);
      if (terminator < 0) return;
      end = terminator + 7;
    }
    this.buffer = this.buffer.subarray(end);
    const pending = this.pending;
    this.pending = null;
    this.onDone(this, pending, status);
  }
}

/**
 * A fixed-rate (open-loop) HTTP load: request i is due at i / rate seconds,
 * whether or not earlier ones have answered (a slow answer never delays the
 * next request: another connection is used, or opened), and its latency
 * counts from when it was sent; how late the generator itself sent it is
 * reported apart. (autocannon's `overallRate` lets each connection send its
 * whole per-second quota back to back and then wait for the next second,
 * which is a burst every second, not a fixed rate.)
 */
export async function runOpenLoop(options: OpenLoopOptions): Promise<OpenLoopResult> {
  const target = new URL(options.url);
  const host = target.hostname;
  const port = Number(target.port);
  const body = Buffer.from(options.body);
  const head = [
    `POST ${target.pathname} HTTP/1.1`,
    `Host: ${target.host}`,
    "Connection: keep-alive",
    `Content-Length: ${body.length}`,
    ...Object.entries(options.headers).map(([name, value]) => `${name}: ${value}`),
    "",
    "",
  ].join("\r\n");
  const request = Buffer.concat([Buffer.from(head, "latin1"), body]);
  const total = Math.round((options.ratePerSecond * options.durationMs) / 1000);
  const latencies = new Float64Array(total);
  const sendLag = new Float64Array(total);
  let completed = 0;
  let errors = 0;
  let non2xx = 0;
  let sent = 0;
  const idle: Connection[] = [];
  const all = new Set<Connection>();

  const onDone = (connection: Connection, pending: Pending, status: number): void => {
    latencies[pending.index] = performance.now() - pending.sentAt;
    if (status < 200 || status >= 300) non2xx += 1;
    completed += 1;
    idle.push(connection);
  };
  const onError = (connection: Connection, pending: Pending | null): void => {
    all.delete(connection);
    const at = idle.indexOf(connection);
    if (at >= 0) idle.splice(at, 1);
    if (pending) {
      latencies[pending.index] = performance.now() - pending.sentAt;
      errors += 1;
      completed += 1;
    }
  };
  const connection = (): Connection => {
    const reused = idle.pop();
    if (reused) return reused;
    const created = new Connection(host, port, onDone, onError);
    all.add(created);
    return created;
  };
  for (let i = 0; i < 16; i += 1) idle.push(connection());

  const start = performance.now();
  const intervalMs = 1000 / options.ratePerSecond;
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const now = performance.now();
      while (sent < total && start + sent * intervalMs <= now) {
        const dueAt = start + sent * intervalMs;
        const sentAt = performance.now();
        sendLag[sent] = sentAt - dueAt;
        connection().send(request, { index: sent, sentAt });
        sent += 1;
      }
      // A 1 ms timer, not a busy loop: the generator must leave the CPU to the server.
      if (sent < total) setTimeout(tick, 1);
      else resolve();
    };
    tick();
  });
  const deadline = performance.now() + (options.timeoutMs ?? 10000);
  while (completed < total && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
  const timeouts = total - completed;
  for (const open of all) open.close();
  return { sent, completed, errors, non2xx, timeouts, latencies, sendLag, elapsedMs: performance.now() - start };
}

export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}
