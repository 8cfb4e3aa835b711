import { constants } from "node:fs";
import { open, readFile, stat, unlink, type FileHandle } from "node:fs/promises";
import path from "node:path";
import { ErrorCode, RelevoError } from "../errors";
import { secretsFile } from "./secrets-store";
import { mintToken, type MintedToken, type Role } from "./tokens";

/**
 * The tokens minted for a data home and their revocations, in
 * `<home>/tokens.jsonl` (mode 0600): one JSON line per fact, appended and
 * fsynced, never rewritten, so two CLI commands at once cannot lose each
 * other's line and a crash leaves at most a torn last line (skipped). It
 * holds ids, roles and times, never a token or its signature. It lives
 * beside `secrets.json` because revoking is the other half of minting: who
 * can read the key can mint, who can write here can revoke, and a Redis
 * lost or restored from an old file cannot un-revoke a token. Running
 * services read it through TokenAccess.
 */
export type TokenFact =
  | {
      readonly op: "minted";
      readonly at: string;
      readonly id: string;
      readonly role: Role;
      readonly expiresAt: string;
      readonly label: string;
    }
  | { readonly op: "revoked"; readonly at: string; readonly id: string }
  | { readonly op: "key-rotated"; readonly at: string };

export interface TokenRecord {
  readonly id: string;
  readonly role: Role;
  readonly label: string;
  readonly createdAt: string;
  readonly expiresAt: string;
  readonly revokedAt: string | null;
  /** The token key was replaced after it was minted: it no longer verifies. */
  readonly keyRotatedAt: string | null;
}

export function tokenRegistryFile(home: string): string {
  return path.join(home, "tokens.jsonl");
}

export async function readTokenFacts(home: string): Promise<TokenFact[]> {
  let text: string;
  try {
    text = await readFile(tokenRegistryFile(home), "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw error;
  }
  return text.split("\n").flatMap((line) => {
    try {
      const fact = JSON.parse(line) as TokenFact;
      return typeof fact === "object" && fact !== null && typeof fact.op === "string" ? [fact] : [];
    } catch {
      return []; // an empty or torn line
    }
  });
}

/** The registry as `relevo token list` shows it: every minted token, oldest first. Pure. */
export function tokenRecords(facts: readonly TokenFact[]): TokenRecord[] {
  const records = new Map<string, TokenRecord>();
  for (const fact of facts) {
    switch (fact.op) {
      case "minted":
        records.set(fact.id, {
          id: fact.id,
          role: fact.role,
          label: fact.label,
          createdAt: fact.at,
          expiresAt: fact.expiresAt,
          revokedAt: null,
          keyRotatedAt: null,
        });
        break;
      case "revoked": {
        const record = records.get(fact.id);
        if (record && record.revokedAt === null) records.set(fact.id, { ...record, revokedAt: fact.at });
        break;
      }
      case "key-rotated":
        for (const [id, record] of records) if (record.keyRotatedAt === null) records.set(id, { ...record, keyRotatedAt: fact.at });
        break;
    }
  }
  return [...records.values()];
}

/** Every id revoked, minted here or not (a token minted by hand with the key can be revoked too). Pure. */
export function revokedIds(facts: readonly TokenFact[]): Set<string> {
  return new Set(facts.flatMap((fact) => (fact.op === "revoked" ? [fact.id] : [])));
}

/** Mints a token and records it (id, role, times, label; never the token). */
export async function issueToken(
  home: string,
  key: string,
  options: { role: Role; ttlMs: number; label: string; now?: number },
): Promise<MintedToken> {
  const now = options.now ?? Date.now();
  const minted = mintToken(key, options.role, { ttlMs: options.ttlMs, now });
  await appendTokenFact(home, {
    op: "minted",
    at: new Date(now).toISOString(),
    id: minted.identity.id,
    role: minted.identity.role,
    expiresAt: new Date(minted.identity.expiresAt).toISOString(),
    label: options.label,
  });
  return minted;
}

/**
 * Revokes a token by id: services reading this home refuse it from their
 * next look (within a second) and close its WebSockets. An id the registry
 * does not know is refused (a typo must not look like a revocation) unless
 * `force`: a token the registry never saw (the CLI's own, minted for each
 * command; one minted by hand with the key) can be revoked by the id in its
 * text. A token revoked already is left as it is. `record`: null for a
 * token the registry does not know.
 */
export async function revokeToken(
  home: string,
  id: string,
  options: { readonly force?: boolean; readonly now?: number } = {},
): Promise<{ record: TokenRecord | null; alreadyRevoked: boolean }> {
  if (!/^[0-9a-f]{12}$/.test(id)) {
    throw new RelevoError(ErrorCode.BadUserInput, `"${id}" is not a token id (12 hex digits, as \`relevo token list\` shows)`);
  }
  const facts = await readTokenFacts(home);
  const record = tokenRecords(facts).find((candidate) => candidate.id === id) ?? null;
  if (!record && !options.force) {
    throw new RelevoError(
      ErrorCode.NotFound,
      `no token with id ${id} was minted for this data home (see \`relevo token list\`); to revoke one it never recorded (the CLI's own, or one minted by hand), add --force`,
    );
  }
  if (revokedIds(facts).has(id)) return { record, alreadyRevoked: true };
  const at = new Date(options.now ?? Date.now()).toISOString();
  await appendTokenFact(home, { op: "revoked", at, id });
  return { record: record && { ...record, revokedAt: at }, alreadyRevoked: false };
}

/**
 * Appends one fact and fsyncs it: a revocation acknowledged to the operator
 * survives a crash. O_APPEND makes each line one write at the end, also
 * with two writers; O_NOFOLLOW refuses a symlink planted at the name. A
 * torn last line (a crash or a full disk mid-write) is ended first: written
 * straight after it, this fact would join it in one unreadable line and be
 * skipped, a revocation reported done and never read. The file has
 * `secrets.json`'s owner (see ownedLikeSecrets).
 */
export async function appendTokenFact(home: string, fact: TokenFact): Promise<void> {
  const file = tokenRegistryFile(home);
  const flags = constants.O_RDWR | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW;
  const handle = await open(file, flags, 0o600);
  try {
    await ownedLikeSecrets(home, handle);
    const line = `${(await endsTorn(handle)) ? "\n" : ""}${JSON.stringify(fact)}\n`;
    const bytes = Buffer.from(line, "utf8");
    // A short write (a full disk) is continued, not taken for the whole line.
    for (let offset = 0; offset < bytes.length;) {
      const { bytesWritten } = await handle.write(bytes, offset, bytes.length - offset);
      offset += bytesWritten;
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
  await syncDirectory(home); // the file's name, when this line created it
}

/**
 * The services of this home read the registry as the user that owns
 * `secrets.json` (they read the key there too). A registry this command
 * creates (as root, say) is given that owner; one that already has another
 * owner is refused, nothing appended: a service that cannot read it would
 * never see the fact (and would refuse every token, see TokenAccess).
 */
async function ownedLikeSecrets(home: string, handle: FileHandle): Promise<void> {
  let secrets: { uid: number; gid: number };
  try {
    secrets = await stat(secretsFile(home));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return; // no key yet: no service reads this home
    throw error;
  }
  const registry = await handle.stat();
  if (registry.uid === secrets.uid) return;
  const file = tokenRegistryFile(home);
  if (registry.size === 0) {
    try {
      await handle.chown(secrets.uid, secrets.gid);
      return;
    } catch (error) {
      await unlink(file).catch(() => undefined); // the empty file this command just made
      throw new RelevoError(
        ErrorCode.PreconditionFailed,
        `${file} could not be given the owner of secrets.json (uid ${secrets.uid}): ${(error as Error).message}; run the command as that user or as root`,
      );
    }
  }
  throw new RelevoError(
    ErrorCode.PreconditionFailed,
    `${file} is owned by uid ${registry.uid} but secrets.json by uid ${secrets.uid}: the services of this home may not be able to read it, so nothing was recorded; give it the owner of secrets.json (chown ${secrets.uid}:${secrets.gid} ${file}) and run the command again`,
  );
}

/** Whether the file is not empty and does not end in a newline: its last line is torn. */
async function endsTorn(handle: FileHandle): Promise<boolean> {
  const { size } = await handle.stat();
  if (size === 0) return false;
  const last = Buffer.alloc(1);
  await handle.read(last, 0, 1, size - 1);
  return last[0] !== 0x0a;
}

async function syncDirectory(directory: string): Promise<void> {
  const handle = await open(directory, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
