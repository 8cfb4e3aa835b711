/**
 * A node's own WAL directory, `<PGDATA>/relevo_wal/`, and the restore_command
 * that reads it. Nodes never read the repository: Relevo (a WalFeeder)
 * writes the segments and histories a recovery needs into this directory
 * through the driver, and the node's restore_command copies from here. Pure.
 *
 * The danger this layout answers: PostgreSQL reads a failing restore_command
 * as the end of the archive. A restore to "latest" then promotes at the
 * first segment Relevo has not fetched yet, and the WAL after it is lost to
 * the copy (a new timeline branches off before it). So the command tells
 * "not fetched yet" apart from "not in the archive": the feeder lists in
 * `expected` every name it will deliver, and the command waits (bounded) for
 * such a name instead of failing; a name not listed fails at once (the real
 * end of the archive, or a timeline PostgreSQL probes for that does not
 * exist).
 */

/** The directory, relative to the data directory (restore_command runs there: PostgreSQL's working directory is PGDATA). */
export const NODE_WAL_DIRECTORY = "relevo_wal";
/** The script restore_command runs (sh reads it: no execute bit needed, mode 0600 like every file of PGDATA). */
export const NODE_WAL_SCRIPT = `${NODE_WAL_DIRECTORY}/restore-wal.sh`;
/** The names the feeder will deliver, one a line (rewritten atomically as the archive grows; empty once it stops). */
export const NODE_WAL_EXPECTED = `${NODE_WAL_DIRECTORY}/expected`;
/** The name restore_command asked for last, so the feeder follows replay (what to fetch next, what to trim). */
export const NODE_WAL_WANTED = `${NODE_WAL_DIRECTORY}/wanted`;

/**
 * `recovery`: a restored copy, which promotes at the end of the archive, so
 * a wait that runs out aborts recovery (an exit above 125 is fatal to
 * PostgreSQL's startup process) rather than promote short of the target.
 * `standby`: a replica, which streams from its upstream at the end of the
 * archive and never promotes by itself: a wait that runs out is the end.
 */
export type NodeWalMode = "recovery" | "standby";

/** How long the command waits for a name the feeder listed, per mode. */
export const NODE_WAL_WAIT_SECONDS: Readonly<Record<NodeWalMode, number>> = { recovery: 600, standby: 30 };

/** The exit status that makes PostgreSQL abort recovery (see RestoreArchivedFile: above 125 is treated as a shell error). */
export const RECOVERY_ABORT_STATUS = 126;

/** restore_command of a node fed by Relevo. `%f` and `%p` are PostgreSQL's (a file name it chose, a path in pg_wal). */
export function nodeRestoreCommand(mode: NodeWalMode): string {
  return `sh ${NODE_WAL_SCRIPT} "%f" "%p" ${mode}`;
}

/**
 * The script behind nodeRestoreCommand, for POSIX sh with cp, grep, mv,
 * sleep (what the PostgreSQL packages and the official image carry). It
 * records `%f` as wanted first, so the feeder learns of a name it had not
 * prefetched while the command waits for it.
 */
export function nodeWalScript(waitSeconds: Readonly<Record<NodeWalMode, number>> = NODE_WAL_WAIT_SECONDS): string {
  const dir = NODE_WAL_DIRECTORY;
  return `# Written by Relevo: this node's restore_command (docs/wal-archiving.md). Run by PostgreSQL in its data directory.
f=$1 p=$2 mode=$3
case $f in ''|.*|*/*) exit 1 ;; esac
if [ "$mode" = standby ]; then wait_s=${waitSeconds.standby}; else wait_s=${waitSeconds.recovery}; fi
printf '%s\\n' "$f" > "${dir}/wanted.$$" && mv -f "${dir}/wanted.$$" "${dir}/wanted"
ticks=$((wait_s * 10))
while :; do
  if [ -f "${dir}/$f" ]; then
    cp "${dir}/$f" "$p" && exit 0
    # Gone between the test and the copy: the feeder trims what replay has passed, and PostgreSQL asks for a segment
    # again (the last one, at the end of recovery). Waited for below like any name not delivered yet: asked again,
    # the feeder delivers it again.
    if [ -f "${dir}/$f" ]; then
      # There but not copied (ENOSPC, EIO in pg_wal): neither "not yet" nor "not there"; a copy must not promote on it.
      echo "relevo: $f could not be copied into pg_wal" >&2
      [ "$mode" = standby ] && exit 1
      exit ${RECOVERY_ABORT_STATUS}
    fi
  fi
  # Not listed: Relevo will not deliver it (the end of the archive, or a timeline that does not exist).
  grep -qxF -- "$f" "${dir}/expected" 2>/dev/null || exit 1
  [ "$ticks" -gt 0 ] || break
  ticks=$((ticks - 1))
  sleep 0.1
done
echo "relevo: $f was not delivered into ${dir}/ within $wait_s s" >&2
[ "$mode" = standby ] && exit 1
# A restored copy must not take this for the end of the archive and promote short of its target.
exit ${RECOVERY_ABORT_STATUS}
`;
}

/**
 * What a restored copy's script becomes once its feeder closed: every call
 * aborts recovery. A copy still running then (a restore that failed and has
 * not destroyed it yet) must not find the script gone: `sh` exits 2 on a
 * missing script, which PostgreSQL takes for "not in the archive", and the
 * copy would promote short of its target.
 */
export function nodeWalAbortScript(): string {
  return `# Written by Relevo: this copy's feeder stopped (docs/wal-archiving.md); recovery must not go on.
echo "relevo: the WAL feeder of this copy stopped" >&2
exit ${RECOVERY_ABORT_STATUS}
`;
}
