import type { RepositorySettings } from "../config/repository-config";
import { ErrorCode, RelevoError } from "../errors";
import type { OsIdentity } from "../nodes/os-user";
import { DirectoryStore } from "../repository/directory-store";
import type { ObjectStore } from "../repository/object-store";
import { openObjectStore } from "../repository/open-store";
import type { Logger } from "../log";
import { assertNotEncrypted, RepositoryKeyring, type KeysLock } from "../repository/repository-keyring";
import type { ScryptParameters } from "../repository/repository-keys";
import { UNENCRYPTED } from "../repository/object-codec";
import { assertDescriptorOfCluster, assertGenerationsDescribed, readRepositoryDescriptor } from "../repository/repository-descriptor";
import { identityFile, readRecordedIdentity } from "../cluster/cluster-identity";
import { RepositoryStore } from "../repository/repository-store";
import type { BackupLocks } from "./backup-locks";
import { Repository } from "./repository";

export interface OpenRepositoryOptions {
  /** The repository's configuration: a directory or an S3 bucket (repository 1 until several repositories are wired). */
  readonly settings: RepositorySettings;
  /**
   * What an S3 store needs: the data home (the record of its multipart
   * uploads, see openObjectStore) and the logger it reports retries to.
   * A directory repository needs neither.
   */
  readonly storeContext?: { readonly home: string; readonly logger: Logger };
  /** PostgreSQL's OS user, owner of the archive's receiving directory. */
  readonly walOwner: OsIdentity | null;
  /** Where pg_receivewal writes on this host (walSpoolDir of the data home): see Repository. */
  readonly spoolDir: string;
  readonly locks?: BackupLocks;
  /**
   * The service: the repository's directories made, and an encrypted
   * repository's keys (keyring and archive key) made when it has none. A
   * restore, a verification from the CLI, a check: false, they only read.
   */
  readonly create: boolean;
  /** scrypt's cost for a new keyring (tests lower it). */
  readonly scrypt?: ScryptParameters;
  /**
   * The data home whose recorded cluster (cluster-identity) the
   * repository's descriptor must name (see assertDescriptorOfCluster);
   * absent, nothing is compared (a check of the repository alone).
   */
  readonly home?: string;
}

/**
 * The repository opened with its keys. With `RELEVO_REPO<n>_CIPHER_PASS`
 * set, its keyring is opened with the pass (a wrong one is
 * REPOSITORY_ACCESS_DENIED naming the repository and the variable; one for
 * a repository holding unencrypted content is PRECONDITION_FAILED), and
 * every object is then read under the keyring's policy and written
 * encrypted. Without one, an encrypted repository is refused
 * (REPOSITORY_ACCESS_DENIED): its objects would each fail their checks,
 * reported as damage, when the configuration is what is wrong.
 */
export async function openConfiguredRepository(options: OpenRepositoryOptions): Promise<Repository> {
  const { settings, walOwner, spoolDir, create } = options;
  const variable = `RELEVO_REPO${settings.index}_CIPHER_PASS`;
  // Directories first: a new keyring is written into them, and the repository's root keeps its mode.
  if (create && settings.type === "dir") await new Repository(settings.path, walOwner, { spoolDir }).ensure();
  const store = await storeOf(settings, options.storeContext);
  try {
    return await openOver(store, options, variable);
  } catch (error) {
    // Nothing is left open by an open that failed (an S3 store's connections).
    await store.close().catch(() => undefined);
    throw error;
  }
}

/** The store under the repository: its directory, or its bucket (the bucket asked for: a missing one fails here). */
async function storeOf(settings: RepositorySettings, context: OpenRepositoryOptions["storeContext"]): Promise<ObjectStore> {
  if (settings.type === "dir") return new DirectoryStore(settings.path);
  if (!context)
    throw new RelevoError(ErrorCode.Internal, `repo${settings.index}: an S3 repository opened without its data home and logger`);
  return openObjectStore(settings, context);
}

async function openOver(store: ObjectStore, options: OpenRepositoryOptions, variable: string): Promise<Repository> {
  const { settings, walOwner, spoolDir, locks, create } = options;
  let keyring: RepositoryKeyring | undefined;
  if (settings.cipherPass === "") await assertNotEncrypted(store, variable);
  else {
    keyring = await RepositoryKeyring.open(store, {
      cipherPass: settings.cipherPass,
      variable,
      create,
      lock: locks && repositoryKeysLock(locks),
      scrypt: options.scrypt,
    });
  }
  // Which generation to read and write: the descriptor is read under the keys (encrypted in an encrypted repository),
  // and one that cannot be read fails the open, never taken for generation 0 (see repository-descriptor).
  const descriptor = await readRepositoryDescriptor(new RepositoryStore(store, keyring?.policy ?? UNENCRYPTED));
  // Nor is a deleted one (a later generation's objects remain), nor one of another cluster than the data home's.
  if (descriptor === null) await assertGenerationsDescribed(store);
  if (options.home !== undefined) assertDescriptorOfCluster(descriptor, await homeCluster(options.home), store.location);
  const repository = new Repository(store, walOwner, { locks, keyring, spoolDir, generation: descriptor?.generation ?? 0 });
  // The spool (a directory repository's was made above, with its directory).
  if (create && repository.directory === null) await repository.ensure();
  return repository;
}

/** The cluster the data home recorded (see cluster-identity), with the file it is in; null when it recorded none. */
async function homeCluster(home: string): Promise<{ readonly systemIdentifier: string; readonly file: string } | null> {
  const recorded = await readRecordedIdentity(home);
  return recorded && { systemIdentifier: recorded.systemIdentifier, file: identityFile(home) };
}

/**
 * The lock a first start holds while it makes an encrypted repository's
 * keys, in Redis with the backups' locks (object storage has no
 * create-if-absent): a second first start waits, then finds them made.
 * Held under a name no backup id takes.
 */
export function repositoryKeysLock(locks: BackupLocks): KeysLock {
  return async (work) => {
    const held = await locks.acquire([REPOSITORY_KEYS_LOCK], { purpose: "making the repository's keys", waitMs: KEYS_LOCK_WAIT_MS });
    try {
      return await work();
    } finally {
      await held.release();
    }
  };
}

/** The lock's name among the backup locks: backup ids are timestamps (backupId, manifest.ts), never this. */
const REPOSITORY_KEYS_LOCK = "repository-keys";

/** How long a first start waits for another making the keys: scrypt and a few small writes, well within it. */
const KEYS_LOCK_WAIT_MS = 60_000;
