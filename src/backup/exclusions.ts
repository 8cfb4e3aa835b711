import type { FileEntry } from "../nodes/node-driver";
import { NODE_WAL_DIRECTORY } from "../restore/node-wal";

/**
 * What a physical backup must not copy (PostgreSQL docs, "Making a Base
 * Backup Using the Low Level API", and what pg_basebackup skips). Pure.
 */
const EXCLUDED_FILES = new Set([
  "postmaster.pid", // a restored copy would take it for a running server
  "postmaster.opts",
  "backup_label", // written from pg_backup_stop's answer instead
  "backup_label.old",
  "tablespace_map",
  "tablespace_map.old",
  "standby.signal", // restore decides the role
  "recovery.signal",
  "current_logfiles",
]);

/** Directories copied empty: their content is rebuilt or meaningless in a copy. */
const EMPTIED_DIRECTORIES = new Set([
  "pg_wal", // replayed from the archive
  "pg_replslot", // slots belong to the live cluster
  "pg_dynshmem",
  "pg_notify",
  "pg_serial",
  "pg_snapshots",
  "pg_stat_tmp",
  "pg_subtrans",
]);

/**
 * A node's own WAL directory, which Relevo feeds while it recovers (see
 * node-wal.ts): WAL, not data, and the script that reads it. Not copied, not
 * even empty; a restore makes it again when it needs it.
 */
const NOT_COPIED_DIRECTORIES = new Set([NODE_WAL_DIRECTORY]);

/** What every temporary file name of Relevo's contains (durable-file.ts, the Docker file agent, container-files.ts). */
const RELEVO_TEMP_MARK = ".relevo-tmp-";

export function isExcluded(entry: Pick<FileEntry, "path" | "type">, unloggedRelations: ReadonlySet<string>): boolean {
  const parts = entry.path.split("/");
  const name = parts[parts.length - 1]!;
  if (parts.length === 1 && entry.type === "file" && EXCLUDED_FILES.has(name)) return true;
  if (parts.length > 1 && EMPTIED_DIRECTORIES.has(parts[0]!)) return true;
  if (NOT_COPIED_DIRECTORIES.has(parts[0]!)) return true;
  if (name.startsWith("pgsql_tmp") || parts.some((part) => part.startsWith("pgsql_tmp"))) return true;
  if (name === "pg_internal.init") return true; // relcache init file, rebuilt at start
  // A temporary file of Relevo's own that a crash left before its rename (see durable-file.ts): it may hold a password
  // (a postgresql.auto.conf's primary_conninfo) and is nothing PostgreSQL reads. Never copied into the repository.
  if (entry.type === "file" && name.includes(RELEVO_TEMP_MARK)) return true;
  if (entry.type !== "file") return false;
  if (/^t\d+_\d+/.test(name)) return true; // temporary relations
  const relation = /^(\d+)(?:_(fsm|vm|init))?(?:\.\d+)?$/.exec(name);
  if (relation && relation[2] !== "init") {
    // Unlogged relation: only its init fork is kept; recovery resets the rest from it.
    const key = `${parts.slice(0, -1).join("/")}/${relation[1]}`;
    if (unloggedRelations.has(key)) return true;
  }
  return false;
}

/** `<dir>/<relfilenode>` of every relation that has an init fork (an unlogged relation). */
export function unloggedRelationsOf(entries: readonly Pick<FileEntry, "path" | "type">[]): Set<string> {
  const result = new Set<string>();
  for (const entry of entries) {
    const match = /^(.*)\/(\d+)_init$/.exec(entry.path);
    if (match && entry.type === "file") result.add(`${match[1]}/${match[2]}`);
  }
  return result;
}
