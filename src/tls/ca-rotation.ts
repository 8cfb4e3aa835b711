import { ErrorCode, RelevoError } from "../errors";
import { replaceFileDurably, syncDirectory } from "../util/durable-file";
import { randomBytes } from "node:crypto";
import { rename } from "node:fs/promises";
import { CertificateAuthority, caFiles, type CaSettings } from "./certificate-authority";
import { createCa } from "./certificate-issuer";
import { certificateFacts } from "./issued-certificates";
import {
  CA_ROLES,
  caCommonName,
  caRotationsUnderWay,
  completeCaSwapLocked,
  ownCaPaths,
  readCaRotation,
  removeCaRotation,
  withCaRotationLock,
  writeCaRotation,
  type CaRole,
  type CaRotationState,
} from "./own-ca-files";
import { joinCertificates } from "./pem-bundle";

/**
 * A CA rotation of the CAs Relevo made itself (the nodes' and the
 * services', each on its own files, together), in two steps. Begin: a new
 * CA signs from now on; the trust file (`ca.crt`) holds the new and the old
 * CA, and the new CA certified by the old one travels after every server
 * certificate, so clients holding either CA verify the servers. Finish,
 * once every certificate was re-issued by the new CA: the old CA leaves the
 * bundle. Re-issuing and reloading is the caller's (certificate holders).
 */

/**
 * The CAs a rotation makes anew: both of Relevo's own, or the services CA
 * alone beside a nodes' CA of RELEVO_TLS_CA_FILE (the operator's, rotated
 * by replacing its files: docs/security.md). Pure.
 */
export function ownCaRoles(settings: Pick<CaSettings, "home" | "tlsCaFile" | "tlsCaKeyFile">): readonly CaRole[] {
  return caFiles(settings).configured ? ["services"] : CA_ROLES;
}

/**
 * Makes a new CA for each of Relevo's own CAs (the nodes' and the
 * services', or the services' alone beside RELEVO_TLS_CA_FILE: see
 * ownCaRoles) and puts it in place beside the old one; PRECONDITION_FAILED
 * while a rotation of either is under way.
 */
export async function beginCaRotation(
  settings: CaSettings,
  options: { readonly now?: Date } = {},
): Promise<Partial<Record<CaRole, CaRotationState>>> {
  // The CAs exist (made once) before the lock, whose file lives beside them in tls/.
  await CertificateAuthority.load(settings);
  return withCaRotationLock(settings.home, async () => {
    // A swap a crash left half done is completed first (the loads below then find nothing to do, so take no lock).
    for (const role of CA_ROLES) await completeCaSwapLocked(settings.home, role);
    for (const role of CA_ROLES) {
      const running = await readCaRotation(settings.home, role);
      if (running !== null) {
        throw new RelevoError(
          ErrorCode.PreconditionFailed,
          `a CA rotation is under way since ${running.startedAt}: finish it first (relevo certificates finish-ca-rotation)`,
        );
      }
    }
    const now = options.now ?? new Date();
    const begun: Partial<Record<CaRole, CaRotationState>> = {};
    for (const role of ownCaRoles(settings)) begun[role] = await beginOne(settings, role, now);
    return begun;
  });
}

async function beginOne(settings: CaSettings, role: CaRole, now: Date): Promise<CaRotationState> {
  const current = await CertificateAuthority.load(settings, { role });
  // The name tells CAs apart (a member's record is compared by its issuer's name): the time, and a random part
  // for two rotations within one second.
  const stamp = `${now.toISOString().replace(/[-:]/g, "").replace(/\..*$/, "")}-${randomBytes(3).toString("hex")}`;
  const next = await createCa({
    commonName: `${caCommonName(role, settings.clusterName)} ${stamp}`,
    now,
    validFrom: new Date(certificateFacts(current.signerPem).notBefore),
  });
  const state: CaRotationState = {
    phase: "bundle",
    startedAt: now.toISOString(),
    previousCaPem: current.signerPem,
    crossCertificatePem: await current.crossCertify(next.certificatePem),
  };
  const paths = ownCaPaths(settings.home, role);
  await replaceFileDurably(paths.nextKey, next.keyPem, { mode: 0o600 });
  await replaceFileDurably(paths.nextCertificate, joinCertificates([next.certificatePem, current.certificatePem]), { mode: 0o644 });
  // From here on the rotation has begun: a load after a crash completes the renames (completeCaSwap).
  await writeCaRotation(settings.home, state, role);
  await rename(paths.nextKey, paths.key);
  await rename(paths.nextCertificate, paths.certificate);
  await syncDirectory(paths.directory);
  return state;
}

/**
 * Drops the old CA from the trust file of each CA under rotation and ends
 * its rotation. The trust file first: a crash between the two leaves the
 * rotation to be finished again, never the old CA trusted with no rotation
 * recorded. PRECONDITION_FAILED when neither CA is under rotation.
 */
export async function finishCaRotation(settings: CaSettings): Promise<void> {
  await CertificateAuthority.load(settings);
  await withCaRotationLock(settings.home, async () => {
    for (const role of CA_ROLES) await completeCaSwapLocked(settings.home, role);
    const roles = await caRotationsUnderWay(settings.home);
    if (roles.length === 0) {
      throw new RelevoError(ErrorCode.PreconditionFailed, "no CA rotation is under way (relevo certificates rotate --ca begins one)");
    }
    for (const role of roles) {
      const current = await CertificateAuthority.load(settings, { role });
      await replaceFileDurably(ownCaPaths(settings.home, role).certificate, current.signerPem, { mode: 0o644 });
      await removeCaRotation(settings.home, role);
    }
  });
}
