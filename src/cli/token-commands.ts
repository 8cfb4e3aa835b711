import type { RelevoConfig } from "../config/config";
import { formatDuration, parseDuration } from "../config/duration";
import { ErrorCode, RelevoError } from "../errors";
import { readSecrets, rotateTokenKey } from "../secrets/secrets-store";
import { appendTokenFact, issueToken, readTokenFacts, revokeToken, tokenRecords, type TokenRecord } from "../secrets/token-registry";
import { MAX_TOKEN_TTL_MS, ROLES, type Role } from "../secrets/tokens";
import type { Output } from "./commands";

/** `relevo token [--role] [--ttl]`: mints a token, records it (never the token itself) and prints it. */
export async function tokenCommand(config: RelevoConfig, options: { role: string; ttl?: string }, output: Output): Promise<void> {
  if (!ROLES.includes(options.role as Role)) {
    throw new RelevoError(ErrorCode.BadUserInput, `unknown role "${options.role}": use ${ROLES.join(" or ")}`);
  }
  const ttlMs = options.ttl === undefined ? config.tokenTtl : parseDuration(options.ttl);
  if (ttlMs === null || ttlMs > MAX_TOKEN_TTL_MS) {
    throw new RelevoError(
      ErrorCode.BadUserInput,
      `--ttl ${options.ttl}: give a duration up to ${formatDuration(MAX_TOKEN_TTL_MS)}, a whole number and s, m, h or d (e.g. 12h, 30d)`,
    );
  }
  const secrets = await readSecrets(config.home);
  const minted = await issueToken(config.home, secrets.tokenKey, { role: options.role as Role, ttlMs, label: "relevo token" });
  output.out(minted.token);
}

/** `relevo token list`: every token minted for this home, by id, without the token. */
export async function tokenListCommand(config: RelevoConfig, options: { json: boolean }, output: Output): Promise<void> {
  const records = tokenRecords(await readTokenFacts(config.home));
  if (options.json) {
    output.out(
      JSON.stringify(
        records.map((record) => ({ ...record, state: tokenState(record, Date.now()) })),
        null,
        2,
      ),
    );
    return;
  }
  output.out(["ID".padEnd(14) + "ROLE".padEnd(10) + "STATE".padEnd(13) + "CREATED".padEnd(26) + "EXPIRES".padEnd(26) + "BY"].join(""));
  for (const record of records) {
    output.out(
      record.id.padEnd(14) +
        record.role.padEnd(10) +
        tokenState(record, Date.now()).padEnd(13) +
        record.createdAt.padEnd(26) +
        record.expiresAt.padEnd(26) +
        record.label,
    );
  }
}

/** What `relevo token list` says of a token: whether a service would accept it now. Pure. */
export function tokenState(record: TokenRecord, now: number): "valid" | "expired" | "revoked" | "key-rotated" {
  if (record.revokedAt !== null) return "revoked";
  if (record.keyRotatedAt !== null) return "key-rotated";
  if (Date.parse(record.expiresAt) <= now) return "expired";
  return "valid";
}

/** `relevo token revoke <id> [--force]`. */
export async function tokenRevokeCommand(config: RelevoConfig, options: { id: string; force?: boolean }, output: Output): Promise<void> {
  const { record, alreadyRevoked } = await revokeToken(config.home, options.id, { force: options.force });
  const token = record ? `token ${record.id} (${record.role})` : `token ${options.id} (not in the registry)`;
  output.out(
    alreadyRevoked
      ? `${token} was revoked already${record?.revokedAt ? `, at ${record.revokedAt}` : ""}`
      : `${token} revoked: running services refuse it within a second and close its WebSockets`,
  );
}

/** `relevo token rotate-key`: a new key; every token minted before is refused. */
export async function tokenRotateKeyCommand(config: RelevoConfig, output: Output): Promise<void> {
  await rotateTokenKey(config.home);
  await appendTokenFact(config.home, { op: "key-rotated", at: new Date().toISOString() });
  output.out(
    "token key replaced: every token minted before is refused (running services read the new key within a second); mint new ones with `relevo token`",
  );
}
