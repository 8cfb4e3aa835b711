import { access, readFile, rename, rm } from "node:fs/promises";
import path from "node:path";
import { ErrorCode, RelevoError } from "../errors";
import { withFileLock } from "../storage/file-lock";
import { replaceFileDurably, syncDirectory } from "../util/durable-file";

/**
 * The files of the CAs Relevo makes itself, in `<home>/tls/`. Two CAs, so
 * that a node's key cannot pose as a service (review 15, H1): the nodes'
 * CA (`ca.key`, `ca.crt`), which issues the nodes' certificates whose keys
 * the PostgreSQL OS user reads, and the services CA (`services-ca.key`,
 * `services-ca.crt`), which issues the API's and Redis's certificates and
 * Redis's client certificates, and which the clients of the API and of
 * Redis trust alone. Each CA's certificate file holds the signing CA first,
 * then, during a CA rotation, the old CA (the trust bundle); while its
 * rotation runs, its record (`rotation.json`, `services-rotation.json`).
 * A rotation writes the new CA as `<stem>-next.key` and `<stem>-next.crt`
 * first, then the record, then renames both into place: a load finds the
 * files of one CA whatever crash came between (completeCaSwap).
 */
export const OWN_CA_DIRECTORY = "tls";

/** Which of Relevo's two CAs: the nodes' (PostgreSQL's servers and clients), or the services' (the API, Redis). */
export type CaRole = "nodes" | "services";

export const CA_ROLES: readonly CaRole[] = ["nodes", "services"];

/** Each role's file names in `tls/`: `<stem>.crt`, `<stem>.key`, `<stem>-next.*`, and its rotation's record. */
const FILE_NAMES: Record<CaRole, { readonly stem: string; readonly rotation: string; readonly commonName: string }> = {
  nodes: { stem: "ca", rotation: "rotation.json", commonName: "Relevo CA" },
  services: { stem: "services-ca", rotation: "services-rotation.json", commonName: "Relevo services CA" },
};

/** The common name of a CA of `role` made for `clusterName` (a rotation's successor adds a time stamp). */
export function caCommonName(role: CaRole, clusterName: string): string {
  return `${FILE_NAMES[role].commonName} ${clusterName}`;
}

export interface OwnCaPaths {
  readonly directory: string;
  readonly certificate: string;
  readonly key: string;
  readonly nextCertificate: string;
  readonly nextKey: string;
  readonly rotation: string;
}

export function ownCaPaths(home: string, role: CaRole): OwnCaPaths {
  const directory = path.join(home, OWN_CA_DIRECTORY);
  const { stem, rotation } = FILE_NAMES[role];
  return {
    directory,
    certificate: path.join(directory, `${stem}.crt`),
    key: path.join(directory, `${stem}.key`),
    nextCertificate: path.join(directory, `${stem}-next.crt`),
    nextKey: path.join(directory, `${stem}-next.key`),
    rotation: path.join(directory, rotation),
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

/** The rotation of `role`'s CA under way in `home`, or null. */
export async function readCaRotation(home: string, role: CaRole): Promise<CaRotationState | null> {
  const text = await readFile(ownCaPaths(home, role).rotation, "utf8").catch((error: NodeJS.ErrnoException) =>
    error.code === "ENOENT" ? null : Promise.reject(error),
  );
  if (text === null) return null;
  try {
    const state = JSON.parse(text) as CaRotationState;
    if (state.phase !== "bundle" || typeof state.previousCaPem !== "string") throw new Error("unexpected content");
    return state;
  } catch (cause) {
    throw new RelevoError(ErrorCode.TlsCaInvalid, `${ownCaPaths(home, role).rotation} cannot be read: restore it from a copy`, { cause });
  }
}

/** The roles whose CA rotation is under way in `home`. */
export async function caRotationsUnderWay(home: string): Promise<CaRole[]> {
  const running: CaRole[] = [];
  for (const role of CA_ROLES) if ((await readCaRotation(home, role)) !== null) running.push(role);
  return running;
}

export async function writeCaRotation(home: string, state: CaRotationState, role: CaRole): Promise<void> {
  await replaceFileDurably(ownCaPaths(home, role).rotation, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
}

export async function removeCaRotation(home: string, role: CaRole): Promise<void> {
  await rm(ownCaPaths(home, role).rotation, { force: true });
  await syncDirectory(ownCaPaths(home, role).directory);
}

/**
 * Held across processes (src/storage/file-lock.ts) while a CA rotation
 * begins or finishes, and while a load completes a swap: without it a
 * load in another process could drop the next CA's files a begin had just
 * written (rotation.json not yet there), leaving a rotation recorded whose
 * CA is gone, and two begins at once would each make a CA.
 */
export function withCaRotationLock<T>(home: string, work: () => Promise<T>): Promise<T> {
  // One lock for both CAs: a rotation begins and finishes them together.
  return withFileLock(path.join(home, OWN_CA_DIRECTORY, "rotation.lock"), { purpose: "CA rotation", waitMs: CA_LOCK_WAIT_MS }, work);
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
export async function completeCaSwap(home: string, role: CaRole): Promise<void> {
  const paths = ownCaPaths(home, role);
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
  await withCaRotationLock(home, () => completeCaSwapLocked(home, role));
}

/** completeCaSwap's work, for a caller that holds the rotation's lock. */
export async function completeCaSwapLocked(home: string, role: CaRole): Promise<void> {
  const paths = ownCaPaths(home, role);
  const begun = (await readCaRotation(home, role)) !== null;
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
