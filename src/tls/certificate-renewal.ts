import { X509Certificate, createPrivateKey } from "node:crypto";
import { isIP } from "node:net";

/**
 * Whether a server certificate kept in files (Redis's: redis-server reads
 * files, so it is not issued anew at every start as a node's is) must be
 * issued again. Pure: the files' contents in, a reason or null out.
 */

/** A kept certificate is re-issued this long before it expires (leaves live a year: LEAF_VALIDITY_DAYS). */
export const RENEW_BEFORE_DAYS = 30;
const DAY_MS = 24 * 60 * 60 * 1000;

export type RenewalReason =
  /** No certificate or no key (a first start, or a file removed). */
  | "missing"
  /** A file that is not a certificate, or a key that is not the certificate's (a torn write). */
  | "unreadable"
  /** Expired, or within RENEW_BEFORE_DAYS of it. */
  | "expiring"
  /** Not signed by the CA now in use (RELEVO_TLS_CA_FILE changed, or the home's CA was made again). */
  | "other-ca"
  /** Some address the server is reached at is not among its subjectAltNames (RELEVO_HOST changed). */
  | "addresses-changed";

export interface KeptCertificate {
  readonly certificatePem: string | null;
  readonly keyPem: string | null;
}

export function renewalReason(
  kept: KeptCertificate,
  options: { readonly caPem: string; readonly addresses: readonly string[]; readonly now: Date; readonly renewBeforeDays?: number },
): RenewalReason | null {
  if (kept.certificatePem === null || kept.keyPem === null) return "missing";
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(kept.certificatePem);
    if (!certificate.checkPrivateKey(createPrivateKey(kept.keyPem))) return "unreadable";
  } catch {
    return "unreadable";
  }
  const renewBeforeMs = (options.renewBeforeDays ?? RENEW_BEFORE_DAYS) * DAY_MS;
  if (new Date(certificate.validTo).getTime() - options.now.getTime() <= renewBeforeMs) return "expiring";
  // The CA file may hold a chain (an intermediate first): its first certificate is the issuer.
  const ca = new X509Certificate(options.caPem);
  if (!certificate.checkIssued(ca) || !certificate.verify(ca.publicKey)) return "other-ca";
  const covers = (address: string): boolean =>
    isIP(address) !== 0 ? certificate.checkIP(address) !== undefined : certificate.checkHost(address, { subject: "never" }) !== undefined;
  if (!options.addresses.every(covers)) return "addresses-changed";
  return null;
}
