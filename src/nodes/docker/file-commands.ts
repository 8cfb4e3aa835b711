import type { ByteRange } from "../node-driver";

/**
 * File operations on a data directory as commands run inside a container
 * (coreutils and findutils of the image, run as the PostgreSQL user, so
 * everything written is owned by it). Pure: each returns the argv.
 * `sh -c script sh args…` keeps paths out of the script text: no quoting.
 */

/** Exit status meaning "no such file". */
export const ABSENT = 3;
/** Exit status of readSmall meaning "longer than asked"; stdout holds the size. */
export const TOO_LARGE = 4;

const sh = (script: string, ...args: string[]): string[] => ["sh", "-c", script, "sh", ...args];

export function readCommand(file: string): string[] {
  return sh(`[ -e "$1" ] || exit ${ABSENT}; exec cat -- "$1"`, file);
}

export function readSmallCommand(file: string, maxBytes: number): string[] {
  return sh(
    `[ -e "$1" ] || exit ${ABSENT}; size=$(stat -c %s -- "$1") || exit 1; if [ "$size" -gt "$2" ]; then echo "$size"; exit ${TOO_LARGE}; fi; exec cat -- "$1"`,
    file,
    String(maxBytes),
  );
}

export function existsCommand(file: string): string[] {
  return sh(`[ -f "$1" ] || exit ${ABSENT}`, file);
}

/**
 * Each range is exactly its length: the file's bytes, then zeros past its
 * end (a relation truncated while it is read; WAL replay truncates it again).
 * `head -c` cuts dd's output plus a run of zeros, so the stream never loses
 * step even when the file shrinks between two ranges.
 */
export function readRangesCommand(file: string, ranges: ReadonlyArray<ByteRange>): string[] {
  const script = [
    `f=$1; shift; [ -e "$f" ] || exit ${ABSENT}`,
    `while [ $# -gt 1 ]; do`,
    `  { dd if="$f" iflag=skip_bytes,count_bytes skip="$1" count="$2" bs=1M status=none 2>/dev/null; head -c "$2" /dev/zero; } | head -c "$2"`,
    `  shift 2`,
    `done`,
  ].join("\n");
  return sh(script, file, ...ranges.flatMap((range) => [String(range.offset), String(range.length)]));
}

/** Exit status of a fresh write whose file exists already (nothing was written). */
export const EXISTS = 5;

/**
 * Writes stdin into `target` and syncs it unless `durable` is false: a temp
 * file the caller renames once it knows its whole input went in (a stream
 * that broke off ends the command's input as if it were complete), or, when
 * `fresh`, the file itself, which must not exist (noclobber; EXISTS if it does).
 */
export function writeCommand(
  target: string,
  options: { mode: number; fresh: boolean; durable: boolean; parents?: "create" | "existing" },
): string[] {
  const sync = options.durable ? ` && sync -- "$1"` : "";
  const create = options.fresh
    ? `if ! ( set -C; : > "$1" ) 2>/dev/null; then if [ -e "$1" ]; then exit ${EXISTS}; fi; exit 1; fi; `
    : options.parents === "existing"
      ? ""
      : `mkdir -p -- "$(dirname -- "$1")" || exit 1; `;
  return sh(`umask 077; ${create}cat > "$1" && chmod "$2" "$1"${sync}`, target, options.mode.toString(8));
}

/** `durable`: the directory is fsynced after the rename, so the new name survives a crash. */
export function renameCommand(from: string, to: string, options: { durable: boolean }): string[] {
  return options.durable ? sh(`mv -f -- "$1" "$2" && sync -- "$(dirname -- "$2")"`, from, to) : ["mv", "-f", "--", from, to];
}

export function makeDirectoryCommand(root: string, directory: string, mode: number): string[] {
  // The data directory itself must be 0700 (PostgreSQL refuses anything looser; a new volume is 1777).
  return sh(`umask 077; chmod 700 -- "$1" && mkdir -p -- "$2" && chmod "$3" -- "$2"`, root, directory, mode.toString(8));
}

export function removeCommand(files: readonly string[]): string[] {
  return ["rm", "-rf", "--", ...files];
}

/** Type, size, mtime (seconds, fractional) and path relative to `dir`, NUL-separated. */
export function listCommand(dir: string): string[] {
  // A running server removes files while they are listed (WAL recycling, temp files): not an error.
  return sh(`[ -d "$1" ] || exit 0; exec find "$1" -mindepth 1 -ignore_readdir_race -printf '%y %s %T@ %P\\0'`, dir);
}

export interface ListedEntry {
  readonly type: "file" | "directory" | "symlink";
  readonly size: number;
  readonly mtimeMs: number;
  readonly relative: string;
}

/** Parses listCommand's output; other file types (sockets, fifos) are left out. */
export function parseListing(output: Buffer): ListedEntry[] {
  const entries: ListedEntry[] = [];
  for (const record of output.toString("utf8").split("\0")) {
    if (record === "") continue;
    const [kind, size, mtime] = record.split(" ", 3);
    const relative = record.slice(kind!.length + size!.length + mtime!.length + 3);
    const type = kind === "f" ? "file" : kind === "d" ? "directory" : kind === "l" ? "symlink" : null;
    if (type === null) continue;
    entries.push({ type, size: Number(size), mtimeMs: Math.round(Number(mtime) * 1000), relative });
  }
  return entries;
}
