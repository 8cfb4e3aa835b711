import { execFileSync } from "node:child_process";
import { ErrorCode, RelevoError } from "../errors";

export interface OsIdentity {
  readonly uid: number;
  readonly gid: number;
  readonly name: string;
}

/**
 * PostgreSQL refuses to run as root. When Relevo runs as root it hands every
 * PostgreSQL process and file to an unprivileged user; otherwise it uses its
 * own identity.
 */
export function resolvePostgresIdentity(configuredUser: string): OsIdentity | null {
  if (process.getuid?.() !== 0) return null;
  try {
    const uid = Number(execFileSync("id", ["-u", configuredUser], { encoding: "utf8" }).trim());
    const gid = Number(execFileSync("id", ["-g", configuredUser], { encoding: "utf8" }).trim());
    return { uid, gid, name: configuredUser };
  } catch (error) {
    throw new RelevoError(
      ErrorCode.InvalidConfig,
      `Relevo runs as root, so PostgreSQL must run as another OS user, but user "${configuredUser}" does not exist; ` +
        `install Debian's postgresql-15 (it creates "postgres") or set RELEVO_PG_OS_USER`,
      { cause: error, details: { env: "RELEVO_PG_OS_USER" } },
    );
  }
}
