import { randomBytes } from "node:crypto";
import { mkdir, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { z } from "zod";
import { ErrorCode, RelevoError } from "../errors";
import { replaceFileDurably } from "../util/durable-file";

/**
 * Generated on first start, stored in `<home>/secrets.json` with mode 0600,
 * never logged. Everything that needs a credential (the CLI's `url`, the
 * API's token check, replication) reads it from here.
 */
const secretsSchema = z.object({
  version: z.literal(1),
  /** Superuser `postgres`: Relevo's administrative connection. */
  superuserPassword: z.string().min(16),
  /** Role `replicator` (REPLICATION): streaming replication and base backups. */
  replicationPassword: z.string().min(16),
  /** Role `rewinder`: the non-superuser login pg_rewind needs (EXECUTE on pg_ls_dir & co.). */
  rewindPassword: z.string().min(16),
  /** Role `relevo`: owner of database `relevo`, used by Prisma. */
  appPassword: z.string().min(16),
  redisPassword: z.string().min(16),
  /** HMAC key that signs API tokens. */
  tokenKey: z.string().min(32),
});

export type Secrets = z.infer<typeof secretsSchema>;

export function secretsFile(home: string): string {
  return path.join(home, "secrets.json");
}

function generate(): Secrets {
  const password = (): string => randomBytes(24).toString("base64url");
  return {
    version: 1,
    superuserPassword: password(),
    replicationPassword: password(),
    rewindPassword: password(),
    appPassword: password(),
    redisPassword: password(),
    tokenKey: randomBytes(32).toString("base64url"),
  };
}

export async function readSecrets(home: string): Promise<Secrets> {
  const file = secretsFile(home);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      throw new RelevoError(ErrorCode.PreconditionFailed, `no secrets in ${home}: run \`relevo up\` first (or set RELEVO_HOME)`, {
        details: { env: "RELEVO_HOME" },
      });
    }
    throw error;
  }
  const parsed = secretsSchema.safeParse(JSON.parse(text));
  if (!parsed.success) {
    throw new RelevoError(ErrorCode.DataDirNotOurs, `${file} is not a Relevo secrets file (or is damaged)`);
  }
  return parsed.data;
}

/** Reads the home's secrets, creating them (and the home) on first start. */
export async function loadOrCreateSecrets(home: string): Promise<Secrets> {
  // 0711: the PostgreSQL OS user must traverse the home to reach its data
  // directories, but nobody else may list it.
  await mkdir(home, { recursive: true, mode: 0o711 });
  try {
    return await readSecrets(home);
  } catch (error) {
    if (!(error instanceof RelevoError) || error.code !== ErrorCode.PreconditionFailed) throw error;
  }
  const secrets = generate();
  const file = secretsFile(home);
  // Durable before any node is given a password from it: a crash must not leave nodes whose passwords nobody kept.
  await replaceFileDurably(file, JSON.stringify(secrets, null, 2) + "\n", { mode: 0o600 });
  return secrets;
}

/**
 * Replaces the token key: every token minted before stops verifying (a
 * running service reads the new key within a second, see TokenAccess). The
 * file is replaced atomically and durably (replaceFileDurably).
 */
export async function rotateTokenKey(home: string): Promise<void> {
  const secrets = await readSecrets(home);
  // Its owner kept: run as root, a root-owned file would be one the service (another user) cannot read.
  const { uid, gid } = await stat(secretsFile(home));
  await replaceFileDurably(
    secretsFile(home),
    JSON.stringify({ ...secrets, tokenKey: randomBytes(32).toString("base64url") }, null, 2) + "\n",
    { mode: 0o600, owner: { uid, gid } },
  );
}
