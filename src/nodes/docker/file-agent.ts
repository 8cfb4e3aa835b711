import type Docker from "dockerode";
import type { SmallFileRead } from "../node-driver";
import { startContainerCommand, type StartedCommand } from "./docker-exec";

/**
 * A long-lived shell in a container that serves small-file requests one
 * after another over its stdin and stdout. Why: a `docker exec` costs about
 * 50 ms here (the engine sets up a process in the container's namespaces),
 * a request to a shell already running 2–3 ms, and a backup or a restore
 * touches a thousand small files. Large files still stream through an exec
 * of their own.
 *
 * Protocol: a request is three lines (operation, argument, path) plus, for
 * writes, exactly `size` bytes (GNU head -c reads no further than it must, and
 * the shell's `read` takes one byte at a time, so nothing is read ahead). An
 * answer is a line "<status> <number>" plus, for a read, exactly that many
 * bytes: the file's size is taken on the open file and its content cut or
 * zero-padded to it (its bytes then /dev/zero's, one full block of dd), so the stream never loses step even when the file
 * changes meanwhile (a relation is read again from the WAL on restore).
 * A durable write (A) fsyncs the file, renames it, then fsyncs its
 * directory (the new name lives in the directory's data); a rename (M, or N
 * with the directory fsynced) finishes a write streamed over an exec.
 * Status 0 done, 1 failed (the caller asks again over an exec of its own, for
 * the real error), 3 absent, 4 larger than asked (the number is its size),
 * 5 exists (a fresh write's file is there already).
 * Paths with a newline are never sent (refused by the caller).
 */
const AGENT_SCRIPT = `umask 077
while IFS= read -r op && IFS= read -r arg && IFS= read -r path; do
  case "$op" in
  S)
    if [ ! -f "$path" ]; then if [ -e "$path" ]; then echo "1 0"; else echo "3 0"; fi; continue; fi
    { size=$(stat -L -c %s /proc/self/fd/3)
      if [ -z "$size" ]; then echo "1 0"
      elif [ "$size" -gt "$arg" ]; then echo "4 $size"
      else echo "0 $size"; [ "$size" -eq 0 ] || cat - /dev/zero <&3 2>/dev/null | dd bs="$size" count=1 iflag=fullblock status=none
      fi
      true; } 3<"$path" 2>/dev/null || { if [ -e "$path" ]; then echo "1 0"; else echo "3 0"; fi; }
    ;;
  F|A)
    mode=\${arg% *}; size=\${arg#* }
    if [ "$op" = F ]; then
      target=$path
      if ! ( set -C; : > "$target" ) 2>/dev/null; then
        head -c "$size" > /dev/null; if [ -e "$target" ]; then echo "5 0"; else echo "1 0"; fi; continue
      fi
    else
      mkdir -p -- "$(dirname -- "$path")" 2>/dev/null; target="$path.relevo-tmp-$$"
    fi
    if head -c "$size" | { cat > "$target" 2>/dev/null || { cat > /dev/null; exit 1; }; } && chmod "$mode" "$target" 2>/dev/null; then
      if [ "$op" = F ]; then echo "0 0"
      elif sync -- "$target" 2>/dev/null && mv -f -- "$target" "$path" 2>/dev/null && sync -- "$(dirname -- "$path")" 2>/dev/null; then echo "0 0"
      else rm -f -- "$target"; echo "1 0"; fi
    else
      rm -f -- "$target"; echo "1 0"
    fi
    ;;
  M|N)
    if mv -f -- "$arg" "$path" 2>/dev/null && { [ "$op" = M ] || sync -- "$(dirname -- "$path")" 2>/dev/null; }; then echo "0 0"; else echo "1 0"; fi
    ;;
  D)
    if chmod 700 -- "$PGDATA" 2>/dev/null && mkdir -p -- "$path" 2>/dev/null && chmod "$arg" -- "$path" 2>/dev/null; then echo "0 0"; else echo "1 0"; fi
    ;;
  *) echo "9 0" ;;
  esac
done`;

/**
 * An answer the agent could not give: the caller asks again over an exec of
 * its own. `answered`: the agent did answer, with a failure (its request was
 * carried out as far as the status says).
 */
export class AgentUnavailable extends Error {
  constructor(
    message: string,
    readonly answered = false,
  ) {
    super(message);
  }
}

/**
 * How long one answer may take: a 16 MiB read is well under a second here.
 * Past it (a container paused mid-request, a dd that failed after its size
 * line) the agent is ended and the work goes over an exec of its own.
 */
const ANSWER_TIMEOUT_MS = 30000;

type Answer = { status: number; value: number; body: Buffer | null };

/** The agent's stdin: requests queued by `ask`, pulled by the exec as it can take them. */
class RequestQueue implements AsyncIterable<Buffer> {
  private readonly items: Buffer[] = [];
  private wake: (() => void) | null = null;
  private ended = false;

  push(item: Buffer): void {
    this.items.push(item);
    this.wake?.();
  }

  end(): void {
    this.ended = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    while (true) {
      while (this.items.length === 0 && !this.ended) await new Promise<void>((resolve) => (this.wake = resolve));
      if (this.items.length === 0) return;
      yield this.items.shift()!;
    }
  }
}

export class FileAgent {
  private closed = false;
  private tail: Promise<unknown> = Promise.resolve();
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Requests asked and not yet answered (the driver gives work to the least busy agent). */
  waiting = 0;
  private readonly reader: AsyncIterator<Buffer>;

  private constructor(
    private readonly command: StartedCommand,
    private readonly requests: RequestQueue,
  ) {
    this.reader = command.stdout[Symbol.asyncIterator]();
    command.finished.then(
      () => this.close(),
      () => this.close(),
    );
  }

  static async start(container: Docker.Container, user: string): Promise<FileAgent> {
    const requests = new RequestQueue();
    const command = await startContainerCommand(container, ["sh", "-c", AGENT_SCRIPT], { user, stdin: requests });
    return new FileAgent(command, requests);
  }

  get alive(): boolean {
    return !this.closed;
  }

  close(): void {
    this.closed = true;
    this.requests.end();
  }

  /** Ends the agent now (its shell sees the end of its input): nothing of it keeps the process alive. */
  stop(): void {
    this.close();
    this.command.cancel();
  }

  async readSmall(file: string, maxBytes: number): Promise<SmallFileRead> {
    const answer = await this.ask(["S", String(maxBytes), file], null, true);
    switch (answer.status) {
      case 0:
        return { state: "read", content: answer.body! };
      case 3:
        return { state: "absent" };
      case 4:
        return { state: "too-large", size: answer.value };
      default:
        throw new AgentUnavailable(`read ${file}: status ${answer.status}`, true);
    }
  }

  /** `fresh`: the file must not exist (written in place; "exists" if it does); else temp + fsync + rename. */
  async write(file: string, content: Buffer, options: { mode: number; fresh: boolean }): Promise<"written" | "exists"> {
    const answer = await this.ask([options.fresh ? "F" : "A", `${options.mode.toString(8)} ${content.length}`, file], content, false);
    if (answer.status === 5) return "exists";
    if (answer.status !== 0) throw new AgentUnavailable(`write ${file}: status ${answer.status}`, true);
    return "written";
  }

  async makeDirectory(directory: string, mode: number): Promise<void> {
    const answer = await this.ask(["D", mode.toString(8), directory], null, false);
    if (answer.status !== 0) throw new AgentUnavailable(`make directory ${directory}: status ${answer.status}`, true);
  }

  /** `durable`: the directory is fsynced after the rename (N), so the new name survives a crash. */
  async rename(from: string, to: string, options: { durable: boolean }): Promise<void> {
    const answer = await this.ask([options.durable ? "N" : "M", from, to], null, false);
    if (answer.status !== 0) throw new AgentUnavailable(`rename ${from}: status ${answer.status}`, true);
  }

  /** One request at a time; a broken exchange ends the agent (the stream would be out of step). */
  private ask(lines: [string, string, string], payload: Buffer | null, withBody: boolean): Promise<Answer> {
    if (lines.some((line) => line.includes("\n"))) return Promise.reject(new AgentUnavailable("a path with a newline"));
    this.waiting += 1;
    const exchange = this.tail.then(async () => {
      if (this.closed) throw new AgentUnavailable("the agent has ended");
      this.requests.push(Buffer.from(lines.join("\n") + "\n", "utf8"));
      if (payload && payload.length > 0) this.requests.push(payload);
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${ANSWER_TIMEOUT_MS} ms`)), ANSWER_TIMEOUT_MS);
      });
      try {
        return await Promise.race([this.answer(withBody), timeout]);
      } catch (error) {
        // The stream may be out of step now: this agent is done.
        this.stop();
        throw new AgentUnavailable((error as Error).message);
      } finally {
        clearTimeout(timer);
      }
    });
    this.tail = exchange.catch(() => undefined);
    return exchange.finally(() => (this.waiting -= 1));
  }

  private async answer(withBody: boolean): Promise<Answer> {
    const [status, value] = (await this.readLine()).split(" ").map(Number) as [number, number];
    const body = withBody && status === 0 ? await this.readBytes(value) : null;
    return { status, value, body };
  }

  private async more(): Promise<void> {
    const next = await this.reader.next();
    if (next.done) throw new Error("the agent's output ended");
    this.pending.push(next.value);
    this.pendingBytes += next.value.length;
  }

  private take(length: number): Buffer {
    const all = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending);
    this.pending = all.length > length ? [all.subarray(length)] : [];
    this.pendingBytes = all.length - length;
    return all.subarray(0, length);
  }

  private async readLine(): Promise<string> {
    while (true) {
      let offset = 0;
      for (const part of this.pending) {
        const newline = part.indexOf(10);
        if (newline >= 0)
          return this.take(offset + newline + 1)
            .toString("utf8")
            .trimEnd();
        offset += part.length;
      }
      await this.more();
    }
  }

  private async readBytes(length: number): Promise<Buffer> {
    while (this.pendingBytes < length) await this.more();
    return Buffer.from(this.take(length));
  }
}
