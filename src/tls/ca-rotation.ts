import { ErrorCode, RelevoError } from "../errors";
import { replaceFileDurably, syncDirectory } from "../util/durable-file";
import { randomBytes } from "node:crypto";
import { rename } from "node:fs/promises";
import { CertificateAuthority, caFiles, type CaSettings } from "./certificate-authority";
import { createCa } from "./certificate-issuer";
import {
  completeCaSwapLocked,
  ownCaPaths,
  readCaRotation,
  removeCaRotation,
  withCaRotationLock,
  writeCaRotation,
  type CaRotationState,
} from "./own-ca-files";
import { joinCertificates } from "./pem-bundle";

/**
 * A CA rotation of the CA Relevo made itself, in two steps. Begin: a new
 * CA signs from now on; the trust file (`ca.crt`) holds the new and the old
 * CA, and the new CA certified by the old one travels after every server
 * certificate, so clients holding either CA verify the servers. Finish,
 * once every certificate was re-issued by the new CA: the old CA leaves the
 * bundle. Re-issuing and reloading is the caller's (certificate holders).
 */

/** The refusal for a CA of RELEVO_TLS_CA_FILE: the operator's, rotated by replacing its files. */
function configuredCaRefusal(settings: CaSettings): RelevoError {
  return new RelevoError(
    ErrorCode.TlsCaConfigured,
    `the CA is RELEVO_TLS_CA_FILE=${JSON.stringify(settings.tlsCaFile)}, not Relevo's to rotate: put the new CA's certificate first in ` +
      `that file with the old one after it, its key in RELEVO_TLS_CA_KEY_FILE, and run \`relevo certificates rotate\`; once every ` +
      `certificate is re-issued, remove the old CA from the file and run \`relevo certificates rotate\` again (docs/security.md)`,
    { details: { env: "RELEVO_TLS_CA_FILE" } },
  );
}

/** Makes a new CA and puts it in place beside the old one; PRECONDITION_FAILED while a rotation is under way. */
export async function beginCaRotation(settings: CaSettings, options: { readonly now?: Date } = {}): Promise<CaRotationState> {
  if (caFiles(settings).configured) throw configuredCaRefusal(settings);
  return withCaRotationLock(settings.home, async () => {
    // A swap a crash left half done is completed first (the load below then finds nothing to do, so takes no lock).
    await completeCaSwapLocked(settings.home);
    return beginLocked(settings, options.now ?? new Date());
  });
}

async function beginLocked(settings: CaSettings, now: Date): Promise<CaRotationState> {
  const running = await readCaRotation(settings.home);
  if (running !== null) {
    throw new RelevoError(
      ErrorCode.PreconditionFailed,
      `a CA rotation is under way since ${running.startedAt}: finish it first (relevo certificates finish-ca-rotation)`,
    );
  }
  const current = await CertificateAuthority.load(settings);
  // The name tells CAs apart (a member's record is compared by its issuer's name): the time, and a random part
  // for two rotations within one second.
  const stamp = `${now.toISOString().replace(/[-:]/g, "").replace(/\..*$/, "")}-${randomBytes(3).toString("hex")}`;
  const next = await createCa({ commonName: `Relevo CA ${settings.clusterName} ${stamp}`, now });
  const state: CaRotationState = {
    phase: "bundle",
    startedAt: now.toISOString(),
    previousCaPem: current.signerPem,
    crossCertificatePem: await current.crossCertify(next.certificatePem),
  };
  const paths = ownCaPaths(settings.home);
  await replaceFileDurably(paths.nextKey, next.keyPem, { mode: 0o600 });
  await replaceFileDurably(paths.nextCertificate, joinCertificates([next.certificatePem, current.certificatePem]), { mode: 0o644 });
  // From here on the rotation has begun: a load after a crash completes the renames (completeCaSwap).
  await writeCaRotation(settings.home, state);
  await rename(paths.nextKey, paths.key);
  await rename(paths.nextCertificate, paths.certificate);
  await syncDirectory(paths.directory);
  return state;
}

/**
 * Drops the old CA from the trust file and ends the rotation. The trust
 * file first: a crash between the two leaves the rotation to be finished
 * again, never the old CA trusted with no rotation recorded.
 */
export async function finishCaRotation(settings: CaSettings): Promise<void> {
  if (caFiles(settings).configured) throw configuredCaRefusal(settings);
  await withCaRotationLock(settings.home, async () => {
    await completeCaSwapLocked(settings.home);
    if ((await readCaRotation(settings.home)) === null) {
      throw new RelevoError(ErrorCode.PreconditionFailed, "no CA rotation is under way (relevo certificates rotate --ca begins one)");
    }
    const current = await CertificateAuthority.load(settings);
    await replaceFileDurably(ownCaPaths(settings.home).certificate, current.signerPem, { mode: 0o644 });
    await removeCaRotation(settings.home);
  });
}
