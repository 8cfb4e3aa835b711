import { setTimeout as sleep } from "node:timers/promises";
import { ErrorCode, RelevoError } from "../errors";
import { putObject, readObject, UNENCRYPTED, type DataKey, type ReadPolicy } from "./object-codec";
import type { ObjectStore } from "./object-store";
import { absentAsNull } from "./repository-store";
import {
  cipherPassWrong,
  deriveRepositoryKey,
  keyCheck,
  keyCheckPasses,
  newDataKey,
  newSalt,
  SCRYPT_PARAMETERS,
  unwrapDataKey,
  wrapDataKey,
  type ScryptParameters,
} from "./repository-keys";
import { KEYS_PREFIX, REPOSITORY_CONTENT_PREFIXES, REPOSITORY_DESCRIPTOR_KEY } from "./repository-layout";

/**
 * An encrypted repository's keys as stored (see repository-keys.ts):
 *
 *   keys/keyring        {"format":1,"scrypt":{N,r,p},"salt":…,"check":…}: how the pass becomes the repository key,
 *                       and a value sealed under that key that tells a right pass from a wrong one
 *   keys/data/<id hex>  one data key, sealed under the repository key and bound to its id
 *   keys/archive        {"format":1,"id":…}: which data key the WAL archive (archive/, wal-summary/, diverged/) is
 *                       written under; made once, by the first process that writes there
 *
 * Both in the codec's checksummed form: neither holds a secret (a wrapped
 * key opens only under the repository key), and both are read before any
 * key is known. Every other object of an encrypted repository is
 * encrypted, its header naming the data key it is under.
 */
export const KEYRING_KEY = `${KEYS_PREFIX}keyring`;

export const ARCHIVE_KEY_RECORD = `${KEYS_PREFIX}archive`;

export function wrappedDataKeyKey(id: Buffer): string {
  return `${KEYS_PREFIX}data/${id.toString("hex")}`;
}

interface StoredKeyring {
  readonly format: 1;
  readonly scrypt: ScryptParameters;
  readonly salt: string;
  readonly check: string;
}

/** The most memory a stored keyring's scrypt parameters may ask for: twice the cost Relevo uses for new ones. */
const MAX_SCRYPT_MEMORY = 256 * 1024 * 1024;

/** How long a new keyring is left before it is read back: another process making one at the same moment has written by then. */
const KEYRING_SETTLE_MS = 1000;

export interface KeyringOptions {
  /** RELEVO_REPO<n>_CIPHER_PASS's value. */
  readonly cipherPass: string;
  /** RELEVO_REPO<n>_CIPHER_PASS, for messages. */
  readonly variable: string;
  /** Whether an empty repository gets a keyring now (the service; a restore only reads). */
  readonly create: boolean;
  readonly settleMs?: number;
  /** scrypt's cost for a new keyring (tests lower it; an existing keyring's own is always used). */
  readonly scrypt?: ScryptParameters;
}

/**
 * The keys of an encrypted repository, opened with the operator's pass:
 * the read policy every object is read under, and new data keys (one per
 * backup, one for the archive) wrapped into the repository. Unwrapped keys
 * are kept in memory only.
 */
export class RepositoryKeyring {
  readonly policy: ReadPolicy;
  private readonly known = new Map<string, Promise<DataKey | null>>();
  private archive: Promise<DataKey> | null = null;

  private constructor(
    private readonly store: ObjectStore,
    private readonly repositoryKey: Buffer,
    private readonly salt: string,
    private readonly settleMs: number,
  ) {
    this.policy = { encrypted: true, lookup: (id) => this.lookup(id) };
  }

  /**
   * Opens the keyring with `cipherPass`: REPOSITORY_ACCESS_DENIED naming the
   * repository and the variable when the pass is not the one it was made
   * with. An empty repository gets a new keyring when `create` is set; one
   * with content but no keyring is unencrypted and stays so
   * (PRECONDITION_FAILED: mixing would leave objects a reader cannot tell
   * apart from forged ones).
   */
  static async open(store: ObjectStore, options: KeyringOptions): Promise<RepositoryKeyring> {
    const stored = await readKeyring(store);
    if (stored) return RepositoryKeyring.unlock(store, stored, options);
    if (!options.create) {
      throw new RelevoError(
        ErrorCode.PreconditionFailed,
        `${store.location}: ${options.variable} is set but the repository has no keys: it is not encrypted (unset ` +
          `${options.variable} to read it), or no service has started on it yet (its first start makes the keys)`,
        { details: { repository: store.location, env: options.variable } },
      );
    }
    if (await hasContent(store)) {
      throw new RelevoError(
        ErrorCode.PreconditionFailed,
        `${store.location} holds backups or WAL but no keyring: it is unencrypted (encryption applies to a new repository: ` +
          `unset ${options.variable}, or point the repository at an empty location and take a full backup there), or its ` +
          `${KEYRING_KEY} was lost`,
        { details: { repository: store.location, env: options.variable } },
      );
    }
    const parameters = options.scrypt ?? SCRYPT_PARAMETERS;
    const salt = newSalt();
    const repositoryKey = await deriveRepositoryKey(options.cipherPass, salt, parameters);
    const made: StoredKeyring = {
      format: 1,
      scrypt: parameters,
      salt: salt.toString("base64"),
      check: keyCheck(repositoryKey).toString("base64"),
    };
    await putObject(store, KEYRING_KEY, Buffer.from(JSON.stringify(made)), { encrypted: false });
    // Two processes that found no keyring at the same moment each wrote one: the one stored last is the repository's.
    // Read it back once both have written, and take it (the pass is the same, or the check refuses it). No data key
    // exists yet, and newDataKey checks the salt again before it wraps one.
    await sleep(options.settleMs ?? KEYRING_SETTLE_MS);
    const settled = await readKeyring(store);
    if (!settled) throw keyringVanished(store);
    return settled.salt === made.salt
      ? new RepositoryKeyring(store, repositoryKey, made.salt, options.settleMs ?? KEYRING_SETTLE_MS)
      : RepositoryKeyring.unlock(store, settled, options);
  }

  private static async unlock(store: ObjectStore, stored: StoredKeyring, options: KeyringOptions): Promise<RepositoryKeyring> {
    const repositoryKey = await deriveRepositoryKey(options.cipherPass, Buffer.from(stored.salt, "base64"), stored.scrypt);
    if (!keyCheckPasses(repositoryKey, Buffer.from(stored.check, "base64"))) throw cipherPassWrong(store.location, options.variable);
    return new RepositoryKeyring(store, repositoryKey, stored.salt, options.settleMs ?? KEYRING_SETTLE_MS);
  }

  /** A new data key, stored wrapped before it is returned: nothing is ever written under a key the repository lacks. */
  async newDataKey(): Promise<DataKey> {
    const stored = await readKeyring(this.store);
    if (stored?.salt !== this.salt) throw keyringVanished(this.store);
    const dataKey = newDataKey();
    await putObject(this.store, wrappedDataKeyKey(dataKey.id), wrapDataKey(this.repositoryKey, dataKey), { encrypted: false });
    this.known.set(dataKey.id.toString("hex"), Promise.resolve(dataKey));
    return dataKey;
  }

  /**
   * The data key `id` (a manifest's dataKeyId): REPOSITORY_CORRUPT when the
   * repository holds no key by that id.
   */
  async dataKey(id: Buffer): Promise<DataKey> {
    const found = await this.lookup(id);
    if (found) return found;
    throw new RelevoError(
      ErrorCode.RepositoryCorrupt,
      `${this.store.location}: data key ${id.toString("hex")} is not in the repository's keys`,
      {
        details: { repository: this.store.location },
      },
    );
  }

  /**
   * The data key the WAL archive and its summaries are written under: the
   * one `keys/archive` names, made (and recorded) by the first process that
   * asks. Two processes that find no record at once each make a key and
   * record it; each reads the record back once both have written and takes
   * the one stored last, as the keyring itself settles. Which key writes
   * use is all that is decided there: every key an object was ever written
   * under stays wrapped in `keys/data/`, so a loser's objects stay
   * readable.
   */
  archiveKey(): Promise<DataKey> {
    if (!this.archive) {
      this.archive = this.openArchiveKey();
      // A failed attempt is not remembered: the next write tries again.
      this.archive.catch(() => (this.archive = null));
    }
    return this.archive;
  }

  private async openArchiveKey(): Promise<DataKey> {
    const recorded = await readArchiveKeyRecord(this.store);
    if (recorded) return this.dataKey(recorded);
    const made = await this.newDataKey();
    const record: StoredArchiveKey = { format: 1, id: made.id.toString("hex") };
    await putObject(this.store, ARCHIVE_KEY_RECORD, Buffer.from(JSON.stringify(record)), { encrypted: false });
    await sleep(this.settleMs);
    const settled = await readArchiveKeyRecord(this.store);
    if (!settled) {
      throw new RelevoError(
        ErrorCode.RepositoryCorrupt,
        `${this.store.location}: ${ARCHIVE_KEY_RECORD} went away just after it was written`,
      );
    }
    return this.dataKey(settled);
  }

  /** The data key an object's header names; null when the repository has none by that id. */
  private lookup(id: Buffer): Promise<DataKey | null> {
    const name = id.toString("hex");
    let found = this.known.get(name);
    if (!found) {
      found = absentAsNull(readObject(this.store, wrappedDataKeyKey(id), UNENCRYPTED)).then(
        (wrapped) => wrapped && unwrapDataKey(this.repositoryKey, id, wrapped, this.store.location),
      );
      // A failed read is not remembered: the next read tries again.
      found.catch(() => this.known.delete(name));
      this.known.set(name, found);
    }
    return found;
  }
}

/**
 * Refuses an encrypted repository opened without a pass: its objects would
 * all fail their checks, each reported as damage, when the configuration
 * is what is wrong.
 */
export async function assertNotEncrypted(store: ObjectStore, variable: string): Promise<void> {
  if ((await store.head(KEYRING_KEY)) === null) return;
  throw new RelevoError(ErrorCode.RepositoryAccessDenied, `${store.location} is encrypted: set ${variable} to the pass it was made with`, {
    details: { repository: store.location, env: variable },
  });
}

interface StoredArchiveKey {
  readonly format: 1;
  readonly id: string;
}

/** The id `keys/archive` records; null when there is none yet. */
async function readArchiveKeyRecord(store: ObjectStore): Promise<Buffer | null> {
  const bytes = await absentAsNull(readObject(store, ARCHIVE_KEY_RECORD, UNENCRYPTED));
  if (bytes === null) return null;
  let value: Partial<StoredArchiveKey> | null;
  try {
    value = JSON.parse(bytes.toString("utf8")) as Partial<StoredArchiveKey>;
  } catch {
    value = null;
  }
  if (value?.format !== 1 || typeof value.id !== "string" || !/^[0-9a-f]{32}$/.test(value.id)) {
    throw new RelevoError(ErrorCode.RepositoryCorrupt, `${store.location}: ${ARCHIVE_KEY_RECORD} is not a record Relevo can read`);
  }
  return Buffer.from(value.id, "hex");
}

async function readKeyring(store: ObjectStore): Promise<StoredKeyring | null> {
  const bytes = await absentAsNull(readObject(store, KEYRING_KEY, UNENCRYPTED));
  if (bytes === null) return null;
  const parsed = parseKeyring(bytes);
  if (!parsed) throw new RelevoError(ErrorCode.RepositoryCorrupt, `${store.location}: ${KEYRING_KEY} is not a keyring Relevo can read`);
  return parsed;
}

function parseKeyring(bytes: Buffer): StoredKeyring | null {
  try {
    const value = JSON.parse(bytes.toString("utf8")) as Partial<StoredKeyring>;
    const { scrypt } = value;
    const integer = (n: unknown, max: number): boolean => Number.isSafeInteger(n) && (n as number) >= 1 && (n as number) <= max;
    if (value.format !== 1 || typeof value.salt !== "string" || typeof value.check !== "string" || !scrypt) return null;
    if (!integer(scrypt.N, 2 ** 20) || !integer(scrypt.r, 32) || !integer(scrypt.p, 4)) return null;
    // scrypt wants N a power of two above 1; and bounded, so that a planted keyring cannot make every start spend more
    // than MAX_SCRYPT_MEMORY (128·N·r bytes) on it.
    if (scrypt.N < 2 || (scrypt.N & (scrypt.N - 1)) !== 0 || 128 * scrypt.N * scrypt.r > MAX_SCRYPT_MEMORY) return null;
    return { format: 1, scrypt: { N: scrypt.N, r: scrypt.r, p: scrypt.p }, salt: value.salt, check: value.check };
  } catch {
    return null;
  }
}

/**
 * Whether the repository holds backups or WAL (anything under its content
 * prefixes, or a descriptor: a later generation's content is under
 * `g<N>/`): encryption can no longer be turned on.
 */
export async function hasContent(store: ObjectStore): Promise<boolean> {
  if ((await store.head(REPOSITORY_DESCRIPTOR_KEY)) !== null) return true;
  for (const prefix of REPOSITORY_CONTENT_PREFIXES) {
    for await (const found of store.list(prefix)) {
      if (found) return true;
    }
  }
  return false;
}

function keyringVanished(store: ObjectStore): RelevoError {
  return new RelevoError(
    ErrorCode.RepositoryCorrupt,
    `${store.location}: ${KEYRING_KEY} changed or went away while this process held it open (another process made the repository's keys again?)`,
  );
}
