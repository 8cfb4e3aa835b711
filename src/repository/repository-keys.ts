import { createCipheriv, createDecipheriv, randomBytes, scrypt } from "node:crypto";
import { ErrorCode, RelevoError } from "../errors";
import type { DataKey } from "./object-codec";

/**
 * Keys of an encrypted repository, in the manner of pgBackRest's
 * repo-cipher-pass: the operator's pass never encrypts data itself. It is
 * stretched with scrypt (a salt kept in the repository) into the
 * repository key, which only wraps data keys; each backup (and the WAL
 * archive) has a random data key, stored wrapped beside what it encrypts.
 * A changed pass re-wraps a few keys, not the data; a leaked data key
 * opens one backup. The pass and every unwrapped key stay in memory.
 */

/**
 * scrypt's cost, as OWASP recommends at least: N = 2^17, r = 8, p = 1 (128
 * MiB and about half a second, once per process and repository). Recorded
 * with the salt, so that a later version may raise it for new repositories
 * and still open the old ones.
 */
export interface ScryptParameters {
  readonly N: number;
  readonly r: number;
  readonly p: number;
}
export const SCRYPT_PARAMETERS: ScryptParameters = { N: 2 ** 17, r: 8, p: 1 };
const NONCE_SIZE = 12;
const TAG_SIZE = 16;
/** What a repository stores to tell a right pass from a wrong one before any data key is tried. */
const KEY_CHECK = Buffer.from("relevo repository key check v1");

export function newSalt(): Buffer {
  return randomBytes(16);
}

export function newDataKey(): DataKey {
  return { id: randomBytes(16), key: randomBytes(32) };
}

export function deriveRepositoryKey(cipherPass: string, salt: Buffer, parameters: ScryptParameters = SCRYPT_PARAMETERS): Promise<Buffer> {
  const maxmem = 128 * parameters.N * parameters.r * 2;
  return new Promise((resolve, reject) =>
    scrypt(cipherPass.normalize("NFC"), salt, 32, { ...parameters, maxmem }, (error, key) => (error ? reject(error) : resolve(key))),
  );
}

function seal(key: Buffer, plain: Buffer, associated: Buffer): Buffer {
  const nonce = randomBytes(NONCE_SIZE);
  const cipher = createCipheriv("aes-256-gcm", key, nonce);
  cipher.setAAD(associated);
  const sealed = Buffer.concat([cipher.update(plain), cipher.final()]);
  return Buffer.concat([nonce, sealed, cipher.getAuthTag()]);
}

function open(key: Buffer, sealed: Buffer, associated: Buffer): Buffer | null {
  if (sealed.length < NONCE_SIZE + TAG_SIZE) return null;
  const decipher = createDecipheriv("aes-256-gcm", key, sealed.subarray(0, NONCE_SIZE));
  decipher.setAAD(associated);
  decipher.setAuthTag(sealed.subarray(sealed.length - TAG_SIZE));
  try {
    return Buffer.concat([decipher.update(sealed.subarray(NONCE_SIZE, sealed.length - TAG_SIZE)), decipher.final()]);
  } catch {
    return null;
  }
}

/** The value a repository keeps to check a pass: KEY_CHECK sealed under the repository key. */
export function keyCheck(repositoryKey: Buffer): Buffer {
  return seal(repositoryKey, KEY_CHECK, Buffer.from("key-check"));
}

/** Whether `repositoryKey` (from a pass) is the one that made `check`. */
export function keyCheckPasses(repositoryKey: Buffer, check: Buffer): boolean {
  return open(repositoryKey, check, Buffer.from("key-check"))?.equals(KEY_CHECK) ?? false;
}

/**
 * Which data key the WAL archive is written under, sealed under the
 * repository key for `keys/archive`: a record naming another key (a
 * backup's, one an attacker chose) does not open, so it is never taken.
 */
export function sealArchiveKeyId(repositoryKey: Buffer, id: Buffer): Buffer {
  return seal(repositoryKey, id, Buffer.from("archive-key"));
}

/** The archive key's id `sealed` holds; null when it was not sealed under this repository key. */
export function openArchiveKeyId(repositoryKey: Buffer, sealed: Buffer): Buffer | null {
  const id = open(repositoryKey, sealed, Buffer.from("archive-key"));
  return id?.length === 16 ? id : null;
}

/** `dataKey` sealed under the repository key, bound to its id (a wrapped key cannot be passed off under another id). */
export function wrapDataKey(repositoryKey: Buffer, dataKey: DataKey): Buffer {
  return seal(repositoryKey, dataKey.key, Buffer.concat([Buffer.from("data-key:"), dataKey.id]));
}

/** The data key `wrapped` holds; REPOSITORY_CORRUPT when it does not open under this repository key. */
export function unwrapDataKey(repositoryKey: Buffer, id: Buffer, wrapped: Buffer, repository: string): DataKey {
  const key = open(repositoryKey, wrapped, Buffer.concat([Buffer.from("data-key:"), id]));
  if (key === null || key.length !== 32) {
    throw new RelevoError(
      ErrorCode.RepositoryCorrupt,
      `${repository}: data key ${id.toString("hex")} does not open under the repository's key, which the pass has opened: the wrapped key was damaged or replaced`,
      { details: { repository } },
    );
  }
  return { id, key };
}

/** The error for a pass that does not open a repository's keys: it names the repository and the variable. */
export function cipherPassWrong(repository: string, variable: string): RelevoError {
  return new RelevoError(
    ErrorCode.RepositoryAccessDenied,
    `${repository}: ${variable} does not open this repository's keys (they were made with another pass, or keys/keyring was altered)`,
    { details: { repository, env: variable } },
  );
}
