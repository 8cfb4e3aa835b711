import type Docker from "dockerode";
import type { Duplex } from "node:stream";
import { sleep } from "../../util/sleep";

/** What a command inside a container gets, beyond its argv. */
export interface ContainerCommandOptions {
  readonly user: string;
  /** Never logged; not kept in the container's configuration (exec only). */
  readonly env?: Readonly<Record<string, string>>;
  /** Written to the command's stdin, which is then closed. */
  readonly stdin?: string | Buffer | AsyncIterable<Buffer>;
}

/** A command started in a container: its stdout as it comes, the rest once it ends. */
export interface StartedCommand {
  readonly stdout: AsyncIterable<Buffer>;
  /**
   * Settles once stdout has been read to its end (or abandoned). Rejects with
   * the input's own error when feeding stdin failed (the command may then
   * have seen a short input as a complete one: its work must not be kept).
   */
  readonly finished: Promise<{ exitCode: number; stderr: string }>;
  /** Drops the connection: the engine closes the command's stdin and output (it ends, as on end of input). */
  cancel(): void;
}

const STDERR_KEPT = 16 * 1024;

/**
 * Runs a command with `docker exec` over a hijacked connection. The engine
 * multiplexes stdout and stderr into one stream of frames (8-byte header:
 * stream id, 3 bytes padding, big-endian length); they are separated here
 * as they are read, so stdout keeps its back-pressure all the way to the
 * container (docker-modem's demuxStream concatenates into one growing buffer
 * and ignores back-pressure: a whole file would end up in memory).
 */
export async function startContainerCommand(
  container: Docker.Container,
  cmd: readonly string[],
  options: ContainerCommandOptions,
): Promise<StartedCommand> {
  const hasStdin = options.stdin !== undefined;
  const exec = await container.exec({
    Cmd: [...cmd],
    User: options.user,
    Env: Object.entries(options.env ?? {}).map(([key, value]) => `${key}=${value}`),
    AttachStdin: hasStdin,
    AttachStdout: true,
    AttachStderr: true,
    Tty: false,
  });
  const connection = await exec.start({ hijack: true, stdin: hasStdin });
  let stderr = "";
  const stdinDone = hasStdin ? feedStdin(connection, options.stdin) : Promise.resolve();
  stdinDone.catch(() => connection.destroy());
  let settle!: () => void;
  const drained = new Promise<void>((resolve) => (settle = resolve));
  async function* stdout(): AsyncGenerator<Buffer> {
    try {
      for await (const frame of demultiplex(connection, (piece) => (stderr = (stderr + piece.toString("utf8")).slice(-STDERR_KEPT))))
        yield frame;
    } finally {
      connection.destroy();
      settle();
    }
  }
  const finished = drained.then(async () => {
    await stdinDone;
    return { exitCode: await exitCodeOf(exec), stderr };
  });
  // Awaited by whoever reads the output; one that abandons it must not leave an unhandled rejection.
  finished.catch(() => undefined);
  return {
    stdout: stdout(),
    finished,
    cancel: () => {
      connection.destroy();
      settle();
    },
  };
}

/** Runs a command to its end and keeps its output. */
export async function runContainerCommand(
  container: Docker.Container,
  cmd: readonly string[],
  options: ContainerCommandOptions,
): Promise<{ exitCode: number; stdout: Buffer; stderr: string }> {
  const started = await startContainerCommand(container, cmd, options);
  const parts: Buffer[] = [];
  try {
    for await (const part of started.stdout) parts.push(part);
  } catch (error) {
    await started.finished; // the input's own error, when feeding it is what broke the stream
    throw error;
  }
  const { exitCode, stderr } = await started.finished;
  return { exitCode, stdout: Buffer.concat(parts), stderr };
}

async function feedStdin(connection: Duplex, input: string | Buffer | AsyncIterable<Buffer>): Promise<void> {
  const write = (chunk: Buffer | string): Promise<void> =>
    new Promise((resolve, reject) => connection.write(chunk, (error) => (error ? reject(error) : resolve())));
  if (typeof input === "string" || Buffer.isBuffer(input)) await write(input);
  // Each chunk is handed to the kernel before the next is pulled: a producer may reuse its buffers.
  else for await (const chunk of input) await write(chunk);
  // Half-close: the command sees end of input, its output still comes back.
  await new Promise<void>((resolve) => connection.end(resolve));
}

async function* demultiplex(raw: AsyncIterable<Buffer>, onStderr: (piece: Buffer) => void): AsyncGenerator<Buffer> {
  const header = Buffer.alloc(8);
  let headerFilled = 0;
  let remaining = 0;
  let stream = 0;
  for await (const data of raw) {
    let offset = 0;
    while (offset < data.length) {
      if (remaining === 0) {
        const take = Math.min(8 - headerFilled, data.length - offset);
        data.copy(header, headerFilled, offset, offset + take);
        headerFilled += take;
        offset += take;
        if (headerFilled === 8) {
          stream = header[0]!;
          remaining = header.readUInt32BE(4);
          headerFilled = 0;
        }
        continue;
      }
      const take = Math.min(remaining, data.length - offset);
      const piece = data.subarray(offset, offset + take);
      offset += take;
      remaining -= take;
      if (stream === 1) yield piece;
      else if (stream === 2) onStderr(piece);
    }
  }
}

/** The engine may report the exec as running for a moment after its output closed. */
async function exitCodeOf(exec: Docker.Exec): Promise<number> {
  for (let attempt = 0; ; attempt += 1) {
    const info = await exec.inspect();
    if (!info.Running && info.ExitCode !== null) return info.ExitCode;
    if (attempt > 200) return 128;
    await sleep(attempt < 10 ? 5 : 50);
  }
}

/** `docker logs` of a container without a TTY comes in the same frames: the text of both streams. */
export function demultiplexBuffer(buffer: Buffer): string {
  const parts: string[] = [];
  let offset = 0;
  while (offset + 8 <= buffer.length) {
    const length = buffer.readUInt32BE(offset + 4);
    parts.push(buffer.subarray(offset + 8, offset + 8 + length).toString("utf8"));
    offset += 8 + length;
  }
  return parts.join("");
}
