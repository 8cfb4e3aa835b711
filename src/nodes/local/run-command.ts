import { hostToolEnvironment } from "../../util/host-tool";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, fchownSync, openSync, unlinkSync, writeSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { ErrorCode, RelevoError } from "../../errors";
import type { ExecResult } from "../node-driver";
import type { OsIdentity } from "../os-user";

export interface RunOptions {
  readonly identity: OsIdentity | null;
  readonly cwd?: string;
  readonly env?: Readonly<Record<string, string>>;
  readonly stdin?: string;
  readonly timeoutMs?: number;
  readonly allowFailure?: boolean;
  /** New session, so that a Ctrl-C on Relevo's terminal does not reach the child. */
  readonly detached?: boolean;
}

const MAX_CAPTURE = 1024 * 1024;

/**
 * Runs a program to completion and captures its output. The environment is
 * built from scratch (PATH and locale only, plus what the caller passes) so
 * that Relevo's own variables never leak into PostgreSQL tools.
 */
export function runCommand(file: string, args: readonly string[], options: RunOptions): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const stdinFd = options.stdin === undefined ? null : stdinFile(options.stdin, options.identity);
    const child = spawn(file, args, {
      cwd: options.cwd ?? "/",
      env: hostToolEnvironment(options.env),
      uid: options.identity?.uid,
      gid: options.identity?.gid,
      detached: options.detached ?? false,
      stdio: [stdinFd ?? "ignore", "pipe", "pipe"],
    });
    if (stdinFd !== null) closeSync(stdinFd);
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (chunk: Buffer) => {
      if (stdout.length < MAX_CAPTURE) stdout += chunk.toString("utf8");
    });
    child.stderr?.on("data", (chunk: Buffer) => {
      if (stderr.length < MAX_CAPTURE) stderr += chunk.toString("utf8");
    });
    let timedOut = false;
    const timer =
      options.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            child.kill("SIGKILL");
          }, options.timeoutMs);
    child.on("error", (error: NodeJS.ErrnoException) => {
      if (timer) clearTimeout(timer);
      const code = error.code === "ENOENT" ? ErrorCode.MissingBinary : ErrorCode.CommandFailed;
      reject(new RelevoError(code, `cannot run ${file}: ${error.message}`, { cause: error }));
    });
    child.on("close", (code, signal) => {
      if (timer) clearTimeout(timer);
      const exitCode = code ?? 128;
      const name = file.split("/").pop();
      if (timedOut) {
        reject(new RelevoError(ErrorCode.Timeout, `${name} did not finish within ${options.timeoutMs} ms`));
        return;
      }
      if (exitCode !== 0 && !options.allowFailure) {
        const why = stderr.trim() || stdout.trim() || (signal ? `killed by ${signal}` : "no output");
        reject(
          new RelevoError(ErrorCode.CommandFailed, `${name} ${args[0] ?? ""} failed with exit code ${exitCode}: ${why}`, {
            details: { exitCode, stderr: stderr.slice(-4000) },
          }),
        );
        return;
      }
      resolve({ exitCode, stdout, stderr });
    });
  });
}

/**
 * Standard input as an unlinked regular file rather than a pipe: tools such as
 * `initdb --pwfile=/dev/stdin` reopen /dev/stdin by path, which works for a
 * file but not for the socket Node uses for a piped stdin. The file is 0600,
 * owned by the tool's user, and gone from the directory before the tool runs.
 */
function stdinFile(content: string, identity: OsIdentity | null): number {
  const file = path.join(os.tmpdir(), `relevo-stdin-${randomBytes(8).toString("hex")}`);
  const fd = openSync(file, "wx+", 0o600);
  try {
    writeSync(fd, content, 0, "utf8");
    if (identity) fchownSync(fd, identity.uid, identity.gid);
    return openSync(`/proc/self/fd/${fd}`, "r");
  } finally {
    closeSync(fd);
    unlinkSync(file);
  }
}
