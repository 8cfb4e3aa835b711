import type { RelevoConfig } from "../config/config";
import type { RepositorySettings } from "../config/repository-config";
import { ErrorCode, RelevoError } from "../errors";
import type { OsIdentity } from "../nodes/os-user";
import { DirectoryStore } from "../repository/directory-store";
import { assertNotEncrypted, RepositoryKeyring, type KeysLock } from "../repository/repository-keyring";
import type { ScryptParameters } from "../repository/repository-keys";
import { UNENCRYPTED } from "../repository/object-codec";
import { readRepositoryDescriptor } from "../repository/repository-descriptor";
import { RepositoryStore } from "../repository/repository-store";
import type { BackupLocks } from "./backup-locks";
import { Repository, walSpoolDir } from "./repository";

export interface OpenRepositoryOptions {
  /** The repository's configuration (repository 1, a directory, until object storage and several repositories are wired). */
  readonly settings: RepositorySettings;
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
  const { settings, walOwner, spoolDir, locks, create } = options;
  if (settings.type !== "dir") {
    throw new RelevoError(ErrorCode.NotImplemented, `repo${settings.index}: an S3 repository is not used yet`, {
      details: { env: `RELEVO_REPO${settings.index}_TYPE` },
    });
  }
  const variable = `RELEVO_REPO${settings.index}_CIPHER_PASS`;
  // Directories first: a new keyring is written into them, and the repository's root keeps its mode.
  if (create) await new Repository(settings.path, walOwner, { spoolDir }).ensure();
  const store = new DirectoryStore(settings.path);
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
  return new Repository(settings.path, walOwner, { locks, keyring, spoolDir, generation: descriptor?.generation ?? 0 });
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

/**
 * Repository 1 as the configuration names it, with this data home's spool:
 * the service (`create`) and the CLI's restores open it alike.
 */
export function openClusterRepository(
  config: Pick<RelevoConfig, "repositories" | "home">,
  options: { readonly walOwner: OsIdentity | null; readonly locks: BackupLocks; readonly create: boolean },
): Promise<Repository> {
  return openConfiguredRepository({ settings: config.repositories[0]!, spoolDir: walSpoolDir(config.home), ...options });
}
