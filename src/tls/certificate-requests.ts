import { isIP } from "node:net";
import { randomBytes } from "node:crypto";
import { ErrorCode, RelevoError } from "../errors";

/**
 * What Relevo's CA issues, decided without I/O: the names a certificate
 * carries, its validity, its serial. The signing is certificate-issuer.ts's.
 */

/** The CA Relevo makes itself: five years, re-made by rotation (a later issue) well before. */
export const CA_VALIDITY_DAYS = 5 * 365;
/** Server and client certificates: about a year; every node's is re-issued at each of its starts anyway. */
export const LEAF_VALIDITY_DAYS = 365;
/** Issued certificates start a little in the past: a peer whose clock is slightly behind must not see one "not yet valid". */
const BACKDATE_MS = 5 * 60 * 1000;
const DAY_MS = 24 * 60 * 60 * 1000;

/** One subjectAltName entry: libpq 15 matches an IP address only against iPAddress entries, a host name against dNSName ones. */
export type SubjectAltName = { readonly type: "ip"; readonly value: string } | { readonly type: "dns"; readonly value: string };

export interface CertificateRequest {
  readonly purpose: "server" | "client";
  /** The subject's common name: the server's name, or the PostgreSQL user a client certificate authenticates as. */
  readonly commonName: string;
  readonly subjectAltNames: readonly SubjectAltName[];
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** Hexadecimal, positive (RFC 5280: at most 20 octets, first bit clear). */
  readonly serialNumber: string;
}

/** A host name as a dNSName may hold it (RFC 1123 labels); anything else is no address of a server. */
const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

/**
 * The subjectAltName entry for one address a server is reached at: an IP
 * address (v4 or v6) as iPAddress, a host name as dNSName (lower-cased,
 * without a trailing dot). A malformed address is BAD_USER_INPUT.
 */
export function subjectAltNameFor(address: string): SubjectAltName {
  if (isIP(address) !== 0) return { type: "ip", value: address };
  if (!HOST_NAME.test(address)) {
    throw new RelevoError(ErrorCode.BadUserInput, `${JSON.stringify(address)} is neither an IP address nor a host name`);
  }
  return { type: "dns", value: address.toLowerCase().replace(/\.$/, "") };
}

/** The entries for every address a server is reached at, each once, in the order given. */
export function subjectAltNamesFor(addresses: readonly string[]): SubjectAltName[] {
  const seen = new Set<string>();
  const names: SubjectAltName[] = [];
  for (const address of addresses) {
    const name = subjectAltNameFor(address);
    const key = `${name.type}:${name.value}`;
    if (seen.has(key)) continue;
    seen.add(key);
    names.push(name);
  }
  return names;
}

/** A positive random serial of 16 bytes (first bit cleared, so DER never reads it as negative). */
export function randomSerialNumber(random: (size: number) => Buffer = randomBytes): string {
  const bytes = random(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x01; // positive, and never a leading zero octet
  return bytes.toString("hex");
}

export interface ServerRequestOptions {
  /** The server's name (a node's, "redis"), its subject's CN. */
  readonly commonName: string;
  /** Every address the server is reached at: at least one. */
  readonly addresses: readonly string[];
  readonly now: Date;
  readonly validityDays?: number;
}

/** A server certificate for `addresses` (each an iPAddress or dNSName entry). */
export function serverCertificateRequest(options: ServerRequestOptions): CertificateRequest {
  const subjectAltNames = subjectAltNamesFor(options.addresses);
  if (subjectAltNames.length === 0) {
    throw new RelevoError(ErrorCode.BadUserInput, `a server certificate for ${options.commonName} needs at least one address`);
  }
  return {
    purpose: "server",
    commonName: checkedCommonName(options.commonName),
    subjectAltNames,
    ...validity(options.now, options.validityDays ?? LEAF_VALIDITY_DAYS),
    serialNumber: randomSerialNumber(),
  };
}

/** A client certificate authenticating as `user` (PostgreSQL's `cert` method compares the CN with the role name). */
export function clientCertificateRequest(options: {
  readonly user: string;
  readonly now: Date;
  readonly validityDays?: number;
}): CertificateRequest {
  return {
    purpose: "client",
    commonName: checkedCommonName(options.user),
    subjectAltNames: [],
    ...validity(options.now, options.validityDays ?? LEAF_VALIDITY_DAYS),
    serialNumber: randomSerialNumber(),
  };
}

/** The validity of a CA Relevo makes: from a little before `now`, CA_VALIDITY_DAYS long. */
export function caValidity(now: Date): { notBefore: Date; notAfter: Date } {
  return validity(now, CA_VALIDITY_DAYS);
}

function validity(now: Date, days: number): { notBefore: Date; notAfter: Date } {
  return { notBefore: new Date(now.getTime() - BACKDATE_MS), notAfter: new Date(now.getTime() + days * DAY_MS) };
}

/**
 * A common name goes into a distinguished name written as text (`CN=…`):
 * only the characters Relevo's names use (node names, role names, "redis"),
 * so no `,`, `=` or `+` can add attributes of its own.
 */
function checkedCommonName(name: string): string {
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) {
    throw new RelevoError(ErrorCode.BadUserInput, `${JSON.stringify(name)} cannot be a certificate's common name`);
  }
  return name;
}
