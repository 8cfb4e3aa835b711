import { X509Certificate } from "node:crypto";
import { mkdir, readFile, readdir } from "node:fs/promises";
import path from "node:path";
import { ErrorCode, RelevoError } from "../errors";
import { withFileLock } from "../storage/file-lock";
import { replaceFileDurably } from "../util/durable-file";
import { splitCertificates } from "./pem-bundle";

/**
 * What Relevo last issued to each holder of a certificate (a node's
 * server, later Redis's and the clients'), one file per holder in
 * `<home>/certificates/`: what `relevo certificates list` shows, what the
 * expiry check reads, and what a CA rotation asks before the old CA goes
 * (a stopped node is re-issued at its next start). No key is kept here.
 */
export const ISSUED_DIRECTORY = "certificates";

/** A certificate's public facts. */
export interface CertificateFacts {
  readonly subject: string;
  readonly subjectAltNames: readonly string[];
  /** Hexadecimal, upper-case, as OpenSSL and Node print it. */
  readonly serial: string;
  readonly issuer: string;
  readonly notBefore: string;
  readonly notAfter: string;
}

export interface IssuedRecord extends CertificateFacts {
  /** Who holds it: `node:<name>`. */
  readonly holder: string;
  readonly recordedAt: string;
}

/** The facts of `pem`'s first certificate (a server's file holds its chain after it). */
export function certificateFacts(pem: string): CertificateFacts {
  const first = splitCertificates(pem)[0];
  if (first === undefined) throw new RelevoError(ErrorCode.Internal, "no PEM certificate to describe");
  const certificate = new X509Certificate(first);
  return {
    subject: certificate.subject.replace(/\n/g, ", "),
    subjectAltNames: certificate.subjectAltName?.split(", ") ?? [],
    serial: certificate.serialNumber.toUpperCase(),
    issuer: certificate.issuer.replace(/\n/g, ", "),
    notBefore: new Date(certificate.validFrom).toISOString(),
    notAfter: new Date(certificate.validTo).toISOString(),
  };
}

/** Whether `pem`'s first certificate was signed by `caPem`'s first (names and signature). Pure. */
export function issuedBy(pem: string, caPem: string): boolean {
  const [leaf] = splitCertificates(pem);
  const [ca] = splitCertificates(caPem);
  if (leaf === undefined || ca === undefined) return false;
  const certificate = new X509Certificate(leaf);
  const authority = new X509Certificate(ca);
  return certificate.checkIssued(authority) && certificate.verify(authority.publicKey);
}

/** The holder's name of a node's server certificate. */
export function nodeHolder(nodeName: string): string {
  return `node:${nodeName}`;
}

function recordFile(home: string, holder: string): string {
  if (!/^[a-z]+:[A-Za-z0-9_.-]{1,64}$/.test(holder))
    throw new RelevoError(ErrorCode.BadUserInput, `${JSON.stringify(holder)} is no holder`);
  return path.join(home, ISSUED_DIRECTORY, `${holder.replace(":", "-")}.json`);
}

/**
 * Held across the processes sharing the data home while a holder's
 * certificate files are replaced and read: a node's start (its files
 * written, then the postmaster reading them) and a renewal of it (new
 * files, the reload, what it serves checked, recorded or put back). Without
 * it two instances renewing one member, or a renewal meeting a restart,
 * could leave a postmaster with one pair's certificate and the other's key,
 * or a record naming a certificate the member does not serve. LOCK_HELD
 * past `waitMs`.
 */
export async function withHolderLock<T>(
  home: string,
  holder: string,
  options: { readonly purpose: string; readonly waitMs: number },
  work: () => Promise<T>,
): Promise<T> {
  const file = recordFile(home, holder).replace(/\.json$/, ".lock");
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  return withFileLock(file, options, work);
}

/** Records that `holder` now has `certificatePem` (durably: the CA rotation's finish relies on it). */
export async function recordIssued(home: string, holder: string, certificatePem: string, now: Date = new Date()): Promise<void> {
  const file = recordFile(home, holder);
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const record: IssuedRecord = { holder, recordedAt: now.toISOString(), ...certificateFacts(certificatePem) };
  await replaceFileDurably(file, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
}

/** Every record, by holder. */
export async function readIssued(home: string): Promise<IssuedRecord[]> {
  const directory = path.join(home, ISSUED_DIRECTORY);
  const names = await readdir(directory).catch((error: NodeJS.ErrnoException) => (error.code === "ENOENT" ? [] : Promise.reject(error)));
  const records: IssuedRecord[] = [];
  for (const name of names.filter((entry) => entry.endsWith(".json")).sort()) {
    records.push(JSON.parse(await readFile(path.join(directory, name), "utf8")) as IssuedRecord);
  }
  return records;
}

/** Every record, keyed by its holder. */
export async function readIssuedByHolder(home: string): Promise<Map<string, IssuedRecord>> {
  return new Map((await readIssued(home)).map((record) => [record.holder, record]));
}

/** Within this many days of its end a certificate is reported (`tls:expiring`) and a leaf re-issued. */
export const EXPIRY_WARNING_DAYS = 30;

/** Whether `notAfter` is within EXPIRY_WARNING_DAYS of `now` (or past). Pure. */
export function expiresSoon(notAfter: string | Date, now: Date): boolean {
  return new Date(notAfter).getTime() - now.getTime() <= EXPIRY_WARNING_DAYS * 86_400_000;
}
