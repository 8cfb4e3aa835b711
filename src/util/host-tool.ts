import { spawn, type ChildProcess, type ChildProcessByStdio, type StdioOptions } from "node:child_process";
import type { Readable } from "node:stream";

/**
 * The environment every program Relevo starts on this machine runs with
 * (PostgreSQL tools, pg_receivewal, pg_waldump, redis-server): built from
 * scratch, PATH and a fixed UTF-8 C locale (messages and output parsed in
 * English) plus what the caller passes (PGPASSWORD). Relevo's own variables,
 * its secrets among them, never reach a child.
 */
export function hostToolEnvironment(extra: Readonly<Record<string, string>> = {}): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? "/usr/bin:/bin", LANG: "C.UTF-8", LC_ALL: "C.UTF-8", ...extra };
}

export interface HostToolOptions {
  /** Added to the environment (see hostToolEnvironment). */
  readonly env?: Readonly<Record<string, string>>;
  /** Runs as this OS user (the PostgreSQL user when Relevo runs as root). */
  readonly identity?: { readonly uid: number; readonly gid: number } | null;
  readonly stdio?: StdioOptions;
  /** Open files the child gets as its descriptors 3, 4, … (after stdio). */
  readonly descriptors?: readonly number[];
  /** New session, so that a Ctrl-C on Relevo's terminal does not reach the child. */
  readonly detached?: boolean;
  readonly cwd?: string;
}

/** Starts a program of this machine with the one environment every host tool gets. */
export function spawnHostTool(
  file: string,
  args: readonly string[],
  options: HostToolOptions & { readonly stdio: ["ignore", "pipe", "pipe"] },
): ChildProcessByStdio<null, Readable, Readable>;
export function spawnHostTool(file: string, args: readonly string[], options?: HostToolOptions): ChildProcess;
export function spawnHostTool(file: string, args: readonly string[], options: HostToolOptions = {}): ChildProcess {
  return spawn(file, args, {
    cwd: options.cwd,
    env: hostToolEnvironment(options.env),
    uid: options.identity?.uid,
    gid: options.identity?.gid,
    detached: options.detached ?? false,
    stdio: withDescriptors(options.stdio ?? "ignore", options.descriptors ?? []),
  });
}

function withDescriptors(stdio: StdioOptions, descriptors: readonly number[]): StdioOptions {
  if (descriptors.length === 0) return stdio;
  return [...(Array.isArray(stdio) ? stdio : [stdio, stdio, stdio]), ...descriptors];
}
