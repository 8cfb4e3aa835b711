import { X509Certificate } from "node:crypto";
import { ErrorCode, RelevoError } from "../errors";

/**
 * A trust file as PEM text: one certificate or several (a CA followed by
 * its chain, or the old and the new CA during a CA rotation). The first
 * certificate of a CA file is the one that signs; the whole file is what
 * clients trust. Pure.
 */

const CERTIFICATE_BLOCK = /-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+?-----END CERTIFICATE-----/g;

/** Every certificate of `pem`, in order, each as its own PEM block (with a final newline). */
export function splitCertificates(pem: string): string[] {
  return [...pem.matchAll(CERTIFICATE_BLOCK)].map((match) => `${match[0].replace(/\r\n/g, "\n")}\n`);
}

/** One file of `certificates`, each once (by its bytes), in the order given. */
export function joinCertificates(certificates: readonly string[]): string {
  const seen = new Set<string>();
  const blocks: string[] = [];
  for (const certificate of certificates.flatMap(splitCertificates)) {
    const fingerprint = new X509Certificate(certificate).fingerprint256;
    if (seen.has(fingerprint)) continue;
    seen.add(fingerprint);
    blocks.push(certificate);
  }
  return blocks.join("");
}

/** The first certificate of `pem`; TLS_CA_INVALID naming `what` when there is none. */
export function firstCertificate(pem: string, what: string): string {
  const first = splitCertificates(pem)[0];
  if (first === undefined) throw new RelevoError(ErrorCode.TlsCaInvalid, `${what} holds no PEM certificate`);
  return first;
}
