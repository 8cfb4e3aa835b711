import { open } from "node:fs/promises";
import { ErrorCode, RelevoError } from "../errors";

/**
 * Why a file Relevo trusts or keeps a secret in must not be used as it is,
 * or null: owned by a user other than root or Relevo's own (who could
 * change it), writable by its group or others (whoever can write a trust
 * file adds a CA Relevo trusts; a key, a key of theirs), and for a secret,
 * readable by them too. Pure.
 */
export function fileModeProblem(
  stat: { readonly uid: number; readonly mode: number },
  options: { readonly secret: boolean; readonly ownUid: number },
): string | null {
  if (stat.uid !== 0 && stat.uid !== options.ownUid)
    return `it is owned by uid ${stat.uid}, not by root or Relevo's own user (uid ${options.ownUid})`;
  const permissions = stat.mode & 0o777;
  if ((permissions & 0o022) !== 0) return `its group or others may write it (mode ${permissions.toString(8)}): chmod go-w it`;
  if (options.secret && (permissions & 0o044) !== 0)
    return `its group or others may read it (mode ${permissions.toString(8)}): chmod 600 it`;
  return null;
}

/**
 * The content of a file a variable names (a CA, a certificate, a key),
 * read at start; INVALID_CONFIG naming the variable when it cannot be read
 * or its owner or mode let someone else change it (or, for a key, read it):
 * see fileModeProblem. The path is shown, never the content.
 */
export async function readConfiguredFile(file: string, env: string, options: { readonly secret?: boolean } = {}): Promise<string> {
  let handle;
  try {
    handle = await open(file, "r");
  } catch (cause) {
    throw new RelevoError(
      ErrorCode.InvalidConfig,
      `invalid configuration: ${env}=${JSON.stringify(file)} cannot be read (${(cause as NodeJS.ErrnoException).code ?? "unreadable"})`,
      { cause, details: { env } },
    );
  }
  try {
    // Judged on the file opened, not on its name: a swap between a check and the read changes nothing.
    const problem = fileModeProblem(await handle.stat(), { secret: options.secret ?? false, ownUid: process.getuid?.() ?? 0 });
    if (problem !== null) {
      throw new RelevoError(ErrorCode.InvalidConfig, `invalid configuration: ${env}=${JSON.stringify(file)} is refused: ${problem}`, {
        details: { env },
      });
    }
    return await handle.readFile("utf8");
  } finally {
    await handle.close();
  }
}
