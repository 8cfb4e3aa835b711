import { access, readFile, rename, rm } from "node:fs/promises";
import path from "node:path";
import { ErrorCode, RelevoError } from "../errors";
import { acquireFileLock } from "../storage/file-lock";
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
 * Held across processes (src/storage/file-lock.ts) while a CA rotation
 * begins or finishes, and while a load completes a swap: without it a
 * load in another process could drop the next CA's files a begin had just
 * written (rotation.json not yet there), leaving a rotation recorded whose
 * CA is gone, and two begins at once would each make a CA.
 */
export function withCaRotationLock<T>(home: string, work: () => Promise<T>): Promise<T> {
  return acquireFileLock(path.join(ownCaPaths(home).directory, "rotation.lock"), {
    purpose: "CA rotation",
    waitMs: CA_LOCK_WAIT_MS,
  }).then(async (lock) => {
    try {
      return await work();
    } finally {
      await lock.release();
    }
  });
}

/** A begin or finish takes well under a second: a holder longer than this is stuck, and the caller is told who. */
const CA_LOCK_WAIT_MS = 30_000;

/**
 * Finishes what a crash interrupted: with `rotation.json` written, the
 * next CA's files are renamed into place (the key first, so a key without
 * its certificate is never left); without it the rotation never began,
 * and the next CA's files are dropped. Nothing to do (and no lock taken)
 * when there are no next CA's files; else under the rotation's lock, so a
 * begin in progress elsewhere is waited for, not undone.
 */
export async function completeCaSwap(home: string): Promise<void> {
  const paths = ownCaPaths(home);
  const pending = async (): Promise<boolean> =>
    (
      await Promise.all(
        [paths.nextKey, paths.nextCertificate].map((file) =>
          access(file).then(
            () => true,
            () => false,
          ),
        ),
      )
    ).some(Boolean);
  if (!(await pending())) return;
  await withCaRotationLock(home, () => completeCaSwapLocked(home));
}

/** completeCaSwap's work, for a caller that holds the rotation's lock. */
export async function completeCaSwapLocked(home: string): Promise<void> {
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
