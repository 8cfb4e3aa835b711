import { ErrorCode, RelevoError } from "../errors";
import { hasControlCharacter } from "../util/control-characters";

/**
 * Every value Relevo writes into a PostgreSQL configuration file
 * (postgresql.conf, relevo.conf, postgresql.auto.conf) or into a libpq
 * connection string goes through here: one place that knows both grammars.
 *
 * PostgreSQL 15's configuration lexer (src/backend/utils/misc/guc-file.l)
 * reads a quoted value as `'([^'\\\n]|\\.|'')*'`: a quote is written `''`
 * or `\'`, and a backslash starts an escape (`\n`, `\t`, octal, or the next
 * character itself). Doubling quotes alone is therefore not enough: in
 * `'a\'' …` the `\'` is a quote and the next `'` ends the value, so whatever
 * follows on the line, or after a newline in the value, is read as further
 * settings (a `restore_command` of one's own, say). Backslashes are doubled
 * as well, and a value may hold no line break at all: the lexer ends a
 * quoted value at one, and nothing Relevo writes needs one.
 */

/** Refuses a value holding a control character (newline, carriage return, NUL, tab…), naming what it was for. */
export function assertNoControlCharacters(value: string, what: string): void {
  if (hasControlCharacter(value)) {
    throw new RelevoError(ErrorCode.BadUserInput, `${what} must not contain a newline or any other control character`, {
      details: { field: what },
    });
  }
}

/** A string value for a PostgreSQL configuration file, quoted as guc-file.l reads it back exactly. */
export function configString(value: string, what = "a configuration value"): string {
  assertNoControlCharacters(value, what);
  return `'${value.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`;
}

/** A setting's name as a configuration line may start with it (a fixed name of Relevo's: anything else is a bug). */
export function configLine(name: string, quotedValue: string): string {
  if (!/^[a-z_][a-z0-9_.]*$/.test(name)) throw new RelevoError(ErrorCode.Internal, `not a setting name: ${JSON.stringify(name)}`);
  return `${name} = ${quotedValue}`;
}

/**
 * A value in a libpq connection string (host=…, password=…): single quotes,
 * with `\` and `'` backslash-escaped (libpq's conninfo_parse). The string
 * itself usually goes into a configuration file next (primary_conninfo),
 * which allows no line break, so none is allowed here either.
 */
export function conninfoValue(value: string, what = "a connection parameter"): string {
  assertNoControlCharacters(value, what);
  return `'${value.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

/** A libpq connection string from its parameters: strings quoted, integers (a port, a timeout) as they are. */
export function conninfoString(parameters: Readonly<Record<string, string | number>>): string {
  return Object.entries(parameters)
    .map(([key, value]) => {
      if (typeof value === "string") return `${key}=${conninfoValue(value, key)}`;
      if (!Number.isSafeInteger(value)) throw new RelevoError(ErrorCode.Internal, `${key} is not an integer: ${value}`);
      return `${key}=${value}`;
    })
    .join(" ");
}

/**
 * A path as one word of a shell command PostgreSQL runs (restore_command,
 * archive_command): single-quoted for the shell (a quote inside written
 * `'\''`), and `%` doubled, since PostgreSQL replaces `%f`, `%p`, `%r` and
 * `%%` in the command before the shell sees it.
 */
export function commandPathWord(value: string, what = "a path"): string {
  assertNoControlCharacters(value, what);
  return `'${value.replace(/'/g, "'\\''").replace(/%/g, "%%")}'`;
}
