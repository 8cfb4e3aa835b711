// @peculiar/x509 resolves its algorithms through tsyringe, which needs the Reflect polyfill loaded first.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { createPrivateKey, type KeyObject } from "node:crypto";
import { ErrorCode, RelevoError } from "../errors";
import { caValidity, randomSerialNumber, type CertificateRequest } from "./certificate-requests";

/**
 * Signing with @peculiar/x509 over Node's own WebCrypto: pure JavaScript, no
 * install script, no child process, and no key ever written to a temporary
 * file to hand it to a tool. Keys Relevo makes are ECDSA P-256.
 */
// Node's global WebCrypto (the same object as node:crypto's webcrypto), typed as @peculiar/x509 expects.
const webcrypto: Crypto = globalThis.crypto;
x509.cryptoProvider.set(webcrypto);

type SigningAlgorithm = EcdsaParams & EcKeyImportParams;
type RsaSigningAlgorithm = RsaHashedImportParams;

const P256: SigningAlgorithm = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };

/** A certificate and its private key, both PEM (the key PKCS#8). */
export interface IssuedCertificate {
  readonly certificatePem: string;
  readonly keyPem: string;
  readonly notAfter: Date;
}

/** What signs: the CA's certificate and private key, ready for WebCrypto. */
export interface CaSigner {
  readonly certificate: x509.X509Certificate;
  readonly privateKey: CryptoKey;
  readonly algorithm: SigningAlgorithm | RsaSigningAlgorithm;
}

/**
 * A new self-signed CA. pathLength 1: beside its leaf certificates it may
 * vouch for one CA, its successor at a CA rotation (crossCertificate), so
 * that a client holding only this CA still verifies a leaf of the next one.
 * `validFrom`, when earlier than its usual start (a little before `now`):
 * a successor's start is its predecessor's, so that a rotation begun under
 * a clock stepped forward does not leave a CA "not yet valid" once the
 * clock is set right.
 */
export async function createCa(options: {
  readonly commonName: string;
  readonly now: Date;
  readonly validFrom?: Date;
}): Promise<IssuedCertificate> {
  const keys = await webcrypto.subtle.generateKey(P256, true, ["sign", "verify"]);
  const validity = caValidity(options.now);
  const certificate = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerialNumber(),
    name: `CN=${options.commonName}`,
    notBefore: new Date(Math.min(validity.notBefore.getTime(), options.validFrom?.getTime() ?? Infinity)),
    notAfter: validity.notAfter,
    keys,
    signingAlgorithm: P256,
    extensions: [
      new x509.BasicConstraintsExtension(true, 1, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certificatePem: certificate.toString("pem"), keyPem: await pkcs8Pem(keys.privateKey), notAfter: certificate.notAfter };
}

/**
 * `successor` (a CA's certificate, PEM) signed by `issuer`: the same
 * subject and key, issued by the old CA. A server that sends it after its
 * leaf is verified by clients that trust only the old CA (leaf → this →
 * old CA) as by those that trust the new one (OpenSSL looks in its trust
 * store first). Null when `issuer` may not vouch for another CA
 * (pathLength 0, as CAs made before rotation existed): clients then need
 * the new CA itself.
 */
/** Whether `issuer` may certify a successor CA: not a CA of pathLength 0 (made before CA rotation existed). */
export function mayCertifySuccessor(issuer: CaSigner): boolean {
  return issuer.certificate.getExtension(x509.BasicConstraintsExtension)?.pathLength !== 0;
}

export async function crossCertificate(options: {
  readonly issuer: CaSigner;
  readonly successorPem: string;
  readonly now: Date;
}): Promise<string | null> {
  if (!mayCertifySuccessor(options.issuer)) return null;
  const successor = new x509.X509Certificate(options.successorPem);
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerialNumber(),
    subject: successor.subject,
    issuer: options.issuer.certificate.subject,
    notBefore: successor.notBefore,
    notAfter: new Date(Math.min(successor.notAfter.getTime(), options.issuer.certificate.notAfter.getTime())),
    publicKey: successor.publicKey,
    signingKey: options.issuer.privateKey,
    signingAlgorithm: options.issuer.algorithm,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(successor.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(options.issuer.certificate, false),
    ],
  });
  return certificate.toString("pem");
}

/**
 * The signer of a CA given as PEM (a certificate, and its key as PKCS#8,
 * SEC1 or PKCS#1): EC keys on P-256 or P-384, or RSA. Refuses, with
 * TLS_CA_INVALID, a certificate that is not a CA's, a key that is not the
 * certificate's, and a CA past its validity.
 */
export async function caSigner(options: {
  readonly certificatePem: string;
  readonly keyPem: string;
  readonly now: Date;
}): Promise<CaSigner> {
  let certificate: x509.X509Certificate;
  let key: KeyObject;
  try {
    certificate = new x509.X509Certificate(options.certificatePem);
  } catch (cause) {
    throw invalidCa("the CA certificate is not a PEM certificate", cause);
  }
  try {
    key = createPrivateKey(options.keyPem);
  } catch (cause) {
    throw invalidCa("the CA key is not an unencrypted PEM private key", cause);
  }
  const constraints = certificate.getExtension(x509.BasicConstraintsExtension);
  if (!constraints?.ca) throw invalidCa(`${certificate.subject} is not a CA certificate (no basicConstraints CA:TRUE)`);
  // What a verifier checks of the issuer, refused here rather than by every client of every leaf it would issue.
  const usages = certificate.getExtension(x509.KeyUsagesExtension);
  if (usages && (usages.usages & x509.KeyUsageFlags.keyCertSign) === 0) {
    throw invalidCa(`${certificate.subject} may not sign certificates (its keyUsage lacks keyCertSign)`);
  }
  if (certificate.notAfter.getTime() <= options.now.getTime()) {
    throw invalidCa(`the CA certificate ${certificate.subject} expired on ${certificate.notAfter.toISOString()}`);
  }
  if (certificate.notBefore.getTime() > options.now.getTime()) {
    throw invalidCa(
      `the CA certificate ${certificate.subject} is not valid before ${certificate.notBefore.toISOString()} ` +
        `(now ${options.now.toISOString()}): check this machine's clock, or give a CA valid now`,
    );
  }
  const algorithm = signingAlgorithmFor(key);
  const privateKey = await webcrypto.subtle.importKey("pkcs8", key.export({ type: "pkcs8", format: "der" }), algorithm, true, ["sign"]);
  const publicKey = await certificate.publicKey.export(algorithm, ["verify"], webcrypto);
  const probe = Buffer.from("relevo: the key is the certificate's");
  const signature = await webcrypto.subtle.sign(algorithm, privateKey, probe);
  if (!(await webcrypto.subtle.verify(algorithm, publicKey, signature, probe))) {
    throw invalidCa(`the CA key is not the key of ${certificate.subject}`);
  }
  return { certificate, privateKey, algorithm };
}

/** Issues `request` under `ca`: a new ECDSA P-256 key and its certificate. */
export async function issueCertificate(ca: CaSigner, request: CertificateRequest): Promise<IssuedCertificate> {
  const keys = await webcrypto.subtle.generateKey(P256, true, ["sign", "verify"]);
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: request.serialNumber,
    subject: `CN=${request.commonName}`,
    issuer: ca.certificate.subject,
    notBefore: request.notBefore,
    // Never past the CA's own end: a verifier would refuse the chain from then anyway.
    notAfter: new Date(Math.min(request.notAfter.getTime(), ca.certificate.notAfter.getTime())),
    publicKey: keys.publicKey,
    signingKey: ca.privateKey,
    signingAlgorithm: ca.algorithm,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([
        request.purpose === "server" ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth,
      ]),
      ...(request.subjectAltNames.length > 0 ? [new x509.SubjectAlternativeNameExtension([...request.subjectAltNames])] : []),
      await x509.AuthorityKeyIdentifierExtension.create(ca.certificate, false),
    ],
  });
  return { certificatePem: certificate.toString("pem"), keyPem: await pkcs8Pem(keys.privateKey), notAfter: certificate.notAfter };
}

function signingAlgorithmFor(key: KeyObject): SigningAlgorithm | RsaSigningAlgorithm {
  const details = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === "ec" && details?.namedCurve === "prime256v1") return P256;
  if (key.asymmetricKeyType === "ec" && details?.namedCurve === "secp384r1") return { name: "ECDSA", namedCurve: "P-384", hash: "SHA-384" };
  if (key.asymmetricKeyType === "rsa") return { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
  throw invalidCa(
    `the CA key is ${key.asymmetricKeyType ?? "unknown"}${details?.namedCurve ? ` on ${details.namedCurve}` : ""}: use EC (P-256, P-384) or RSA`,
  );
}

async function pkcs8Pem(key: CryptoKey): Promise<string> {
  return x509.PemConverter.encode(await webcrypto.subtle.exportKey("pkcs8", key), "PRIVATE KEY") + "\n";
}

function invalidCa(message: string, cause?: unknown): RelevoError {
  return new RelevoError(ErrorCode.TlsCaInvalid, message, { cause, details: { env: "RELEVO_TLS_CA_FILE" } });
}
