/**
 * A local node's folder, `<home>/nodes/<name>`, as the driver lays it out:
 * the data directory, the server log pg_ctl writes (`pg_ctl -l`), and the
 * server's TLS files beside (never in) the data directory, which
 * pg_basebackup, pg_rewind and backups copy. Nothing else in it is
 * Relevo's. Pure.
 */
export const DATA_DIRECTORY = "data";
export const SERVER_LOG = "postgresql.log";
export const TLS_DIRECTORY = "tls";
/** The files of TLS_DIRECTORY: the server's certificate and key, and the CA's certificate. */
export const TLS_FILES = { certificate: "server.crt", key: "server.key", ca: "ca.crt" } as const;

export interface FolderEntry {
  readonly name: string;
  readonly type: "file" | "directory" | "symlink" | "other";
}

/**
 * The entries of a node's folder the driver did not put there: anything but
 * `data` and `tls` as directories and `postgresql.log` as a file. A `data` that is a
 * symlink or a file is not the driver's either (an operator's move to
 * another disk, a mistake): what it points at or holds is not Relevo's to
 * judge. Sorted, for stable messages.
 */
export function foreignEntries(entries: readonly FolderEntry[]): string[] {
  return entries
    .filter(
      (entry) =>
        !((entry.name === DATA_DIRECTORY || entry.name === TLS_DIRECTORY) && entry.type === "directory") &&
        !(entry.name === SERVER_LOG && entry.type === "file"),
    )
    .map((entry) => entry.name)
    .sort();
}
