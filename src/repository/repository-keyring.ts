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
  openArchiveKeyId,
  SCRYPT_PARAMETERS,
  sealArchiveKeyId,
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
 *   keys/keyring.copy   the same, read when keys/keyring is absent or damaged: the salt exists nowhere else, and
 *                       without it no key of the repository opens (the service's start writes a lost one of the two
 *                       again from the other)
 *   keys/data/<id hex>  one data key, sealed under the repository key and bound to its id
 *   keys/archive        {"format":1,"sealed":…}: which data key the WAL archive (archive/, wal-summary/, diverged/) is
 *                       written under, sealed under the repository key (nobody without the pass can point it at another)
 *
 * In the codec's checksummed form: none holds a secret (a wrapped key
 * opens only under the repository key), and the keyring is read before any
 * key is known. Every other object of an encrypted repository is
 * encrypted, its header naming the data key it is under. The keyring and
 * the archive record are made once, by a first start, under a lock every
 * process making them takes (KeysLock): a second first start finds them
 * made and takes them, never overwrites them.
 */
export const KEYRING_KEY = `${KEYS_PREFIX}keyring`;

export const KEYRING_COPY_KEY = `${KEYS_PREFIX}keyring.copy`;

export const ARCHIVE_KEY_RECORD = `${KEYS_PREFIX}archive`;

export function wrappedDataKeyKey(id: Buffer): string {
  return `${KEYS_PREFIX}data/${id.toString("hex")}`;
}

/**
 * Runs `work` holding the lock that every process making a repository's
 * keys takes (in the store that holds Relevo's leases: object storage has
 * no create-if-absent; see open-repository.ts).
 */
export type KeysLock = <T>(work: () => Promise<T>) => Promise<T>;

interface StoredKeyring {
  readonly format: 1;
  readonly scrypt: ScryptParameters;
  readonly salt: string;
  readonly check: string;
}

/** The most memory a stored keyring's scrypt parameters may ask for: twice the cost Relevo uses for new ones. */
const MAX_SCRYPT_MEMORY = 256 * 1024 * 1024;

export interface KeyringOptions {
  /** RELEVO_REPO<n>_CIPHER_PASS's value. */
  readonly cipherPass: string;
  /** RELEVO_REPO<n>_CIPHER_PASS, for messages. */
  readonly variable: string;
  /**
   * Whether the keys an empty repository lacks (keyring, archive key) are
   * made now (the service; a restore or a check only reads).
   */
  readonly create: boolean;
  /** Held while the keys are made: required with `create`. */
  readonly lock?: KeysLock;
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
  ) {
    this.policy = { encrypted: true, lookup: (id) => this.lookup(id) };
  }

  /**
   * Opens the keyring with `cipherPass`: REPOSITORY_ACCESS_DENIED naming the
   * repository and the variable when the pass is not the one it was made
   * with. An empty repository gets its keys when `create` is set; one with
   * content but no keys is unencrypted and stays so (PRECONDITION_FAILED:
   * mixing would leave objects a reader cannot tell apart from forged
   * ones); one with keys but no keyring lost it (REPOSITORY_CORRUPT).
   */
  static async open(store: ObjectStore, options: KeyringOptions): Promise<RepositoryKeyring> {
    const found = await readKeyring(store);
    if (found) {
      const keyring = await RepositoryKeyring.unlock(store, found, options);
      if (options.create) {
        await remakeLostKeyring(store, found);
        if ((await store.head(ARCHIVE_KEY_RECORD)) === null) await lockOf(store, options)(() => keyring.makeArchiveKeyIfAbsent());
        // The archive's key read at the start, not at the first segment's push.
        await keyring.archiveKey();
      }
      return keyring;
    }
    await refuseWithoutKeyring(store, options);
    // scrypt first: the lock is then held only for a read and a few small writes, and a second first start waiting on
    // it finds the keys made once it has it.
    const parameters = options.scrypt ?? SCRYPT_PARAMETERS;
    const salt = newSalt();
    const repositoryKey = await deriveRepositoryKey(options.cipherPass, salt, parameters);
    return lockOf(
      store,
      options,
    )(async () => {
      const made = await readKeyring(store);
      let keyring: RepositoryKeyring;
      if (made) {
        keyring = await RepositoryKeyring.unlock(store, made, options);
      } else {
        await refuseWithoutKeyring(store, options);
        const stored: StoredKeyring = {
          format: 1,
          scrypt: parameters,
          salt: salt.toString("base64"),
          check: keyCheck(repositoryKey).toString("base64"),
        };
        const bytes = Buffer.from(JSON.stringify(stored));
        await putObject(store, KEYRING_KEY, bytes, { encrypted: false });
        await putObject(store, KEYRING_COPY_KEY, bytes, { encrypted: false });
        keyring = new RepositoryKeyring(store, repositoryKey, stored.salt);
      }
      await keyring.makeArchiveKeyIfAbsent();
      return keyring;
    });
  }

  private static async unlock(store: ObjectStore, stored: StoredKeyring, options: KeyringOptions): Promise<RepositoryKeyring> {
    const repositoryKey = await deriveRepositoryKey(options.cipherPass, Buffer.from(stored.salt, "base64"), stored.scrypt);
    if (!keyCheckPasses(repositoryKey, Buffer.from(stored.check, "base64"))) throw cipherPassWrong(store.location, options.variable);
    return new RepositoryKeyring(store, repositoryKey, stored.salt);
  }

  /** A new data key, stored wrapped before it is returned: nothing is ever written under a key the repository lacks. */
  async newDataKey(): Promise<DataKey> {
    await this.assertKeyringUnchanged();
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
   * Deletes the wrapped data key `id` (a removed backup's): what was
   * written under it can no longer be read. The archive's key is never
   * deleted (INTERNAL): every WAL object is under it.
   */
  async deleteDataKey(id: Buffer): Promise<void> {
    const archive = await this.readArchiveKeyId();
    if (archive?.equals(id)) {
      throw new RelevoError(ErrorCode.Internal, `${this.store.location}: data key ${id.toString("hex")} is the WAL archive's: not deleted`);
    }
    await this.store.delete([wrappedDataKeyKey(id)]);
    this.known.delete(id.toString("hex"));
  }

  /**
   * The data key the WAL archive and its summaries are written under: the
   * one `keys/archive` names (made with the keyring, by the first start).
   * The keyring is read again first, as for a new data key: a key is never
   * handed out for writes once the repository's keyring is not the one
   * this process opened (nothing written then could be read back).
   */
  async archiveKey(): Promise<DataKey> {
    await this.assertKeyringUnchanged();
    if (!this.archive) {
      this.archive = this.readArchiveKey();
      // A failed attempt is not remembered: the next write tries again.
      this.archive.catch(() => (this.archive = null));
    }
    return this.archive;
  }

  /** The key `keys/archive` names; REPOSITORY_CORRUPT when there is none, or it was not sealed under this repository key. */
  private async readArchiveKey(): Promise<DataKey> {
    const id = await this.readArchiveKeyId();
    if (id) return this.dataKey(id);
    throw new RelevoError(
      ErrorCode.RepositoryCorrupt,
      `${this.store.location}: ${ARCHIVE_KEY_RECORD} is missing (the service's start makes it with the keyring)`,
      { details: { repository: this.store.location } },
    );
  }

  /** Called under the keys' lock: the archive's data key made and recorded, unless a record exists. */
  private async makeArchiveKeyIfAbsent(): Promise<void> {
    if (await this.readArchiveKeyId()) return;
    const made = await this.newDataKey();
    const record: StoredArchiveKey = { format: 1, sealed: sealArchiveKeyId(this.repositoryKey, made.id).toString("base64") };
    await putObject(this.store, ARCHIVE_KEY_RECORD, Buffer.from(JSON.stringify(record)), { encrypted: false });
  }

  /** The id `keys/archive` records; null when there is none yet. */
  private async readArchiveKeyId(): Promise<Buffer | null> {
    const bytes = await absentAsNull(readObject(this.store, ARCHIVE_KEY_RECORD, UNENCRYPTED));
    if (bytes === null) return null;
    let value: Partial<StoredArchiveKey> | null;
    try {
      value = JSON.parse(bytes.toString("utf8")) as Partial<StoredArchiveKey>;
    } catch {
      value = null;
    }
    const id =
      value?.format === 1 && typeof value.sealed === "string"
        ? openArchiveKeyId(this.repositoryKey, Buffer.from(value.sealed, "base64"))
        : null;
    if (id) return id;
    throw new RelevoError(
      ErrorCode.RepositoryCorrupt,
      `${this.store.location}: ${ARCHIVE_KEY_RECORD} was not written under this repository's key (damaged or replaced)`,
      { details: { repository: this.store.location } },
    );
  }

  /** REPOSITORY_CORRUPT once the stored keyring is not the one this process opened. */
  private async assertKeyringUnchanged(): Promise<void> {
    const stored = await readKeyring(this.store);
    if (stored?.salt !== this.salt) throw keyringChanged(this.store);
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
 * is what is wrong; and what it wrote would be plaintext beside them. Any
 * object under keys/ says so, not only the keyring (which may be lost).
 */
export async function assertNotEncrypted(store: ObjectStore, variable: string): Promise<void> {
  if (!(await hasKeys(store))) return;
  throw new RelevoError(ErrorCode.RepositoryAccessDenied, `${store.location} is encrypted: set ${variable} to the pass it was made with`, {
    details: { repository: store.location, env: variable },
  });
}

/** Whether the repository holds any of an encrypted repository's keys. */
export async function hasKeys(store: ObjectStore): Promise<boolean> {
  for await (const found of store.list(KEYS_PREFIX)) {
    if (found) return true;
  }
  return false;
}

/**
 * Why a repository with no keyring is not given one (nothing when it may
 * be): other keys without it (the keyring lost), content without keys (not
 * encrypted), or nothing at all to a reader (no service started on it).
 */
async function refuseWithoutKeyring(store: ObjectStore, options: KeyringOptions): Promise<void> {
  const details = { repository: store.location, env: options.variable };
  if (await hasKeys(store)) {
    throw new RelevoError(
      ErrorCode.RepositoryCorrupt,
      `${store.location} is encrypted but its keyring is lost (${KEYRING_KEY} and ${KEYRING_COPY_KEY} are absent or ` +
        `unreadable while other keys remain): put back a copy of ${KEYRING_KEY}; without it nothing in the repository can be read`,
      { details },
    );
  }
  if (await hasContent(store)) {
    throw new RelevoError(
      ErrorCode.PreconditionFailed,
      `${store.location} holds backups or WAL but no keys: it is not encrypted (unset ${options.variable} to use it; encryption ` +
        `applies to a new repository: point the repository at an empty location and take a full backup there)`,
      { details },
    );
  }
  if (!options.create) {
    throw new RelevoError(
      ErrorCode.PreconditionFailed,
      `${store.location}: ${options.variable} is set but the repository is empty: no service has started on it yet (its first ` +
        `start makes the keys)`,
      { details },
    );
  }
}

/**
 * Writes the keyring again where one of its two copies (keys/keyring,
 * keys/keyring.copy) is absent or unreadable, from `opened`, the one the
 * pass just opened: the salt exists only there, so a lost copy is re-made
 * at the service's next start rather than left until the other is lost
 * too. Another start doing the same writes the same bytes.
 */
async function remakeLostKeyring(store: ObjectStore, opened: StoredKeyring): Promise<void> {
  for (const key of [KEYRING_KEY, KEYRING_COPY_KEY]) {
    // Damaged is lost; a store that does not answer fails the start as any read would.
    const readable = await readKeyringAt(store, key).catch((error: unknown) => {
      if (error instanceof RelevoError && error.code === ErrorCode.RepositoryCorrupt) return null;
      throw error;
    });
    if (readable) continue;
    await putObject(store, key, Buffer.from(JSON.stringify(opened)), { encrypted: false });
  }
}

function lockOf(store: ObjectStore, options: KeyringOptions): KeysLock {
  if (options.lock) return options.lock;
  throw new RelevoError(ErrorCode.Internal, `${store.location}: the repository's keys are made only under their lock`);
}

interface StoredArchiveKey {
  readonly format: 1;
  /** The archive key's id, sealed under the repository key (sealArchiveKeyId). */
  readonly sealed: string;
}

/** The keyring, from its copy when keys/keyring is absent or damaged; null when neither is there. */
async function readKeyring(store: ObjectStore): Promise<StoredKeyring | null> {
  const first = await readKeyringAt(store, KEYRING_KEY).catch((error: unknown) => error as Error);
  if (first !== null && !(first instanceof Error)) return first;
  const copy = await readKeyringAt(store, KEYRING_COPY_KEY).catch(() => null);
  if (copy) return copy;
  if (first instanceof Error) throw first;
  return null;
}

async function readKeyringAt(store: ObjectStore, key: string): Promise<StoredKeyring | null> {
  const bytes = await absentAsNull(readObject(store, key, UNENCRYPTED));
  if (bytes === null) return null;
  const parsed = parseKeyring(bytes);
  if (!parsed) throw new RelevoError(ErrorCode.RepositoryCorrupt, `${store.location}: ${key} is not a keyring Relevo can read`);
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

function keyringChanged(store: ObjectStore): RelevoError {
  return new RelevoError(
    ErrorCode.RepositoryCorrupt,
    `${store.location}: ${KEYRING_KEY} is no longer the keyring this process opened (replaced or removed from outside ` +
      `Relevo): nothing more is written; put the repository's keyring back`,
    { details: { repository: store.location } },
  );
}
