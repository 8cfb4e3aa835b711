import { readFile, rename, rm } from "node:fs/promises";
import path from "node:path";
import { ErrorCode, RelevoError } from "../errors";
import { replaceFileDurably, syncDirectory } from "../util/durable-file";

/**
 * The files of the CA Relevo makes itself, in `<home>/tls/`: `ca.key`,
 * `ca.crt` (the signing CA first, then, during a CA rotation, the old CA:
 * the trust bundle), and, while a CA rotation runs, `rotation.json`.
 * A rotation writes the new CA as `ca-next.key` and `ca-next.crt` first,
 * then `rotation.json`, then renames both into place: a load finds the
 * files of one CA whatever crash came between (completeCaSwap).
 */
export const OWN_CA_DIRECTORY = "tls";

export interface OwnCaPaths {
  readonly directory: string;
  readonly certificate: string;
  readonly key: string;
  readonly nextCertificate: string;
  readonly nextKey: string;
  readonly rotation: string;
}

export function ownCaPaths(home: string): OwnCaPaths {
  const directory = path.join(home, OWN_CA_DIRECTORY);
  return {
    directory,
    certificate: path.join(directory, "ca.crt"),
    key: path.join(directory, "ca.key"),
    nextCertificate: path.join(directory, "ca-next.crt"),
    nextKey: path.join(directory, "ca-next.key"),
    rotation: path.join(directory, "rotation.json"),
  };
}

/**
 * A CA rotation under way: the old CA stays in every trust bundle (and the
 * new CA certified by it is sent after every server's certificate) until
 * every certificate is re-issued by the new one and the rotation is
 * finished (`relevo certificates finish-ca-rotation`).
 */
export interface CaRotationState {
  readonly phase: "bundle";
  readonly startedAt: string;
  /** The CA being replaced (its certificate, PEM). */
  readonly previousCaPem: string;
  /** The new CA certified by the old one, or null when the old one could not vouch for it (pathLength 0). */
  readonly crossCertificatePem: string | null;
}

/** The rotation under way in `home`, or null. */
export async function readCaRotation(home: string): Promise<CaRotationState | null> {
  const text = await readFile(ownCaPaths(home).rotation, "utf8").catch((error: NodeJS.ErrnoException) =>
    error.code === "ENOENT" ? null : Promise.reject(error),
  );
  if (text === null) return null;
  try {
    const state = JSON.parse(text) as CaRotationState;
    if (state.phase !== "bundle" || typeof state.previousCaPem !== "string") throw new Error("unexpected content");
    return state;
  } catch (cause) {
    throw new RelevoError(ErrorCode.TlsCaInvalid, `${ownCaPaths(home).rotation} cannot be read: restore it from a copy`, { cause });
  }
}

export async function writeCaRotation(home: string, state: CaRotationState): Promise<void> {
  await replaceFileDurably(ownCaPaths(home).rotation, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
}

export async function removeCaRotation(home: string): Promise<void> {
  await rm(ownCaPaths(home).rotation, { force: true });
  await syncDirectory(ownCaPaths(home).directory);
}

/**
 * Finishes what a crash interrupted: with `rotation.json` written, the
 * next CA's files are renamed into place (the key first, so a key without
 * its certificate is never left); without it the rotation never began,
 * and the next CA's files are dropped.
 */
export async function completeCaSwap(home: string): Promise<void> {
  const paths = ownCaPaths(home);
  const begun = (await readCaRotation(home)) !== null;
  let changed = false;
  for (const [next, current] of [
    [paths.nextKey, paths.key],
    [paths.nextCertificate, paths.certificate],
  ] as const) {
    const done = begun
      ? await rename(next, current).then(
          () => true,
          (error: NodeJS.ErrnoException) => (error.code === "ENOENT" ? false : Promise.reject(error)),
        )
      : await rm(next).then(
          () => true,
          (error: NodeJS.ErrnoException) => (error.code === "ENOENT" ? false : Promise.reject(error)),
        );
    changed ||= done;
  }
  if (changed) await syncDirectory(paths.directory);
}
