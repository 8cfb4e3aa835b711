import { ErrorCode, RelevoError } from "../errors";
import { configString } from "../postgres/config-values";
import { hasControlCharacter } from "../util/control-characters";
import { nodeRestoreCommand } from "./node-wal";

/** Where recovery stops (PostgreSQL's recovery_target_* settings). */
export type RecoveryTarget =
  | { readonly kind: "latest" }
  | { readonly kind: "immediate" } // as soon as the backup is consistent
  | { readonly kind: "time"; readonly time: string }
  /** inclusive (default true): the record starting at the LSN is replayed too. */
  | { readonly kind: "lsn"; readonly lsn: string; readonly inclusive?: boolean }
  | { readonly kind: "name"; readonly name: string };

/**
 * Longest restore point name PostgreSQL takes: pg_create_restore_point and
 * recovery_target_name both refuse MAXFNAMELEN (64) bytes or more.
 */
const RESTORE_POINT_NAME_MAX_BYTES = 63;

/**
 * A restore point name an operator gives (restore --name, the API's
 * restorePoint): it ends up in the restored copy's configuration, so no
 * control character (a newline would start a setting of its own) and no
 * backslash (PostgreSQL's configuration parser reads escapes in it; names
 * Relevo could not tell apart from what was meant are refused rather than
 * guessed). Quotes are fine: they are written doubled.
 */
export function assertRestorePointName(name: string): void {
  const refuse = (why: string): never => {
    throw new RelevoError(ErrorCode.BadUserInput, `restore point name ${JSON.stringify(name)} ${why}`, { details: { field: "name" } });
  };
  if (name.length === 0) refuse("is empty");
  if (hasControlCharacter(name)) refuse("contains a newline or another control character");
  if (name.includes("\\")) refuse("contains a backslash");
  if (Buffer.byteLength(name, "utf8") > RESTORE_POINT_NAME_MAX_BYTES) refuse(`is longer than ${RESTORE_POINT_NAME_MAX_BYTES} bytes`);
}

/**
 * A standby's settings, as pg_basebackup -R writes them (plus the archive,
 * to catch up from before it streams: what Relevo feeds into its own
 * relevo_wal/, see node-wal.ts): its upstream with its own
 * application_name, its slot, and the latest timeline. Pure.
 */
export function standbySettings(options: { conninfo: string; slot: string }): string {
  return [
    `primary_conninfo = ${configString(options.conninfo)}`,
    `primary_slot_name = ${configString(options.slot, "primary_slot_name")}`,
    `restore_command = ${configString(nodeRestoreCommand("standby"))}`,
    "recovery_target_timeline = 'latest'",
    "",
  ].join("\n");
}

/**
 * Recovery settings for a restored copy. Pure. It replays the WAL Relevo
 * feeds into its own directory (restore_command: see node-wal.ts; it never
 * reads the repository), follows the latest timeline (so a target after a
 * failover is reachable), promotes at the target, and cannot touch the live
 * cluster: no archiving, no upstream, no slot, no synchronous standbys.
 */
export function recoverySettings(options: { target: RecoveryTarget; timeline?: number | "latest" }): string {
  const lines = [
    `restore_command = ${configString(nodeRestoreCommand("recovery"))}`,
    `recovery_target_timeline = ${configString(String(options.timeline ?? "latest"))}`,
    "recovery_target_action = 'promote'",
    "archive_mode = off",
    "primary_conninfo = ''",
    "primary_slot_name = ''",
    "synchronous_standby_names = ''",
  ];
  const target = options.target;
  switch (target.kind) {
    case "latest":
      break;
    case "immediate":
      lines.push("recovery_target = 'immediate'");
      break;
    case "time":
      if (Number.isNaN(Date.parse(target.time))) throw new RelevoError(ErrorCode.BadUserInput, `not a time: ${target.time} (use ISO 8601)`);
      // PostgreSQL's own timestamp syntax: its recovery_target_time check refuses the ISO 8601 'T…Z' form.
      lines.push(
        `recovery_target_time = ${configString(new Date(target.time).toISOString().replace("T", " ").replace("Z", "+00"))}`,
        "recovery_target_inclusive = true",
      );
      break;
    case "lsn":
      if (!/^[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}$/.test(target.lsn))
        throw new RelevoError(ErrorCode.BadUserInput, `not an LSN: ${target.lsn}`);
      lines.push(
        `recovery_target_lsn = ${configString(target.lsn)}`,
        `recovery_target_inclusive = ${target.inclusive === false ? "false" : "true"}`,
      );
      break;
    case "name":
      assertRestorePointName(target.name);
      lines.push(`recovery_target_name = ${configString(target.name, "recovery_target_name")}`);
      break;
  }
  return lines.join("\n") + "\n";
}

/**
 * A line setting one of the upstream settings, as PostgreSQL's parser
 * (guc-file.l) reads it: names in any case, and `=` optional (`name 'value'`
 * and `name'value'` set it too). A longer name that merely starts like one
 * of these (`primary_conninfo_x`) is another setting.
 */
const UPSTREAM_SETTING =
  /^\s*(primary_conninfo|primary_slot_name|synchronous_standby_names|archive_command|restore_command)(?![A-Za-z0-9_\u0080-\uffff])/i;
/**
 * An include directive, which the parser honours in postgresql.auto.conf
 * too: a file it names could set any of the above again (review 14). ALTER
 * SYSTEM never writes one, so a copy loses nothing it should keep.
 */
const INCLUDE_DIRECTIVE = /^\s*(include|include_if_exists|include_dir)(?![A-Za-z0-9_\u0080-\uffff])/i;

/** postgresql.auto.conf without what ties a copy to its source (pg_basebackup -R wrote these), nor any include. */
export function stripUpstreamSettings(autoConf: string): string {
  return autoConf
    .split("\n")
    .filter((line) => !UPSTREAM_SETTING.test(line) && !INCLUDE_DIRECTIVE.test(line))
    .join("\n");
}

/** The one target an operator named (at most one of them; none: the end of the archive). */
export function recoveryTargetFrom(choice: {
  time?: string | null;
  lsn?: string | null;
  name?: string | null;
  immediate?: boolean | null;
}): RecoveryTarget {
  const given = [choice.time, choice.lsn, choice.name, choice.immediate ? "immediate" : null].filter((value) => value);
  if (given.length > 1)
    throw new RelevoError(ErrorCode.BadUserInput, "give at most one recovery target: a time, an LSN, a restore point name, or immediate");
  if (choice.time) return { kind: "time", time: choice.time };
  if (choice.lsn) return { kind: "lsn", lsn: choice.lsn };
  if (choice.name) {
    assertRestorePointName(choice.name);
    return { kind: "name", name: choice.name };
  }
  if (choice.immediate) return { kind: "immediate" };
  return { kind: "latest" };
}
