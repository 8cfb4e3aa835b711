import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";

export type Role = "viewer" | "operator";
export const ROLES: readonly Role[] = ["viewer", "operator"];

export interface TokenIdentity {
  /** Short random id: names the token in the audit trail, `relevo token list` and `revoke`, without revealing it. */
  readonly id: string;
  readonly role: Role;
  /** When the token stops being accepted (ms since the epoch); signed, so it cannot be moved. */
  readonly expiresAt: number;
}

const PREFIX = "rlv";
const DAY_MS = 86_400_000;

/** `relevo token` and the banner of `relevo up`, unless RELEVO_TOKEN_TTL or `--ttl` say otherwise. */
export const DEFAULT_TOKEN_TTL_MS = 30 * DAY_MS;
/** The CLI's own operator tokens, minted per command and never shown: long enough for one command's requests. */
export const CLI_TOKEN_TTL_MS = 15 * 60_000;
/** A token that outlives a year is a password nobody remembers handing out. */
export const MAX_TOKEN_TTL_MS = 366 * DAY_MS;

export interface MintedToken {
  readonly token: string;
  readonly identity: TokenIdentity;
}

/**
 * Bearer tokens: `rlv.<role>.<id>.<expires>.<hmac>`, signed with the data
 * home's token key; `<expires>` is in seconds since the epoch and inside the
 * signed part. Whether a token is revoked is not in it: see TokenAccess.
 */
export function mintToken(key: string, role: Role, options: { ttlMs?: number; now?: number } = {}): MintedToken {
  const id = randomBytes(6).toString("hex");
  const ttlMs = Math.min(options.ttlMs ?? DEFAULT_TOKEN_TTL_MS, MAX_TOKEN_TTL_MS);
  const expires = Math.floor(((options.now ?? Date.now()) + ttlMs) / 1000);
  const body = `${PREFIX}.${role}.${id}.${expires}`;
  return { token: `${body}.${sign(key, body)}`, identity: { id, role, expiresAt: expires * 1000 } };
}

/**
 * What a token's text says, checked against the key; time and revocation
 * are the caller's (an identity stays the same while its validity changes).
 * `legacy`: a token of the format before expiry (`rlv.<role>.<id>.<hmac>`)
 * with a good signature: refused, with a message that says to mint a new one.
 */
export type TokenReading =
  { readonly phase: "signed"; readonly identity: TokenIdentity } | { readonly phase: "legacy" } | { readonly phase: "invalid" };

export function readToken(key: string, token: string): TokenReading {
  const parts = token.split(".");
  if (parts[0] !== PREFIX || (parts.length !== 4 && parts.length !== 5)) return { phase: "invalid" };
  const [, role, id] = parts as [string, string, string];
  if (!ROLES.includes(role as Role) || !/^[0-9a-f]{12}$/.test(id)) return { phase: "invalid" };
  const signature = parts[parts.length - 1]!;
  const body = parts.slice(0, -1).join(".");
  if (!sameSignature(sign(key, body), signature)) return { phase: "invalid" };
  if (parts.length === 4) return { phase: "legacy" };
  const expires = parts[3]!;
  if (!/^\d{1,12}$/.test(expires)) return { phase: "invalid" };
  return { phase: "signed", identity: { id, role: role as Role, expiresAt: Number(expires) * 1000 } };
}

function sign(key: string, body: string): string {
  return createHmac("sha256", key).update(body).digest("base64url");
}

function sameSignature(expected: string, given: string): boolean {
  const a = Buffer.from(expected);
  const b = Buffer.from(given);
  return a.length === b.length && timingSafeEqual(a, b);
}

export function roleAllows(granted: Role, required: Role): boolean {
  return ROLES.indexOf(granted) >= ROLES.indexOf(required);
}

/** Why a signed token is not accepted now, or null when it is: expiry first (a revoked token expires anyway). */
export function tokenRefusal(
  identity: TokenIdentity,
  options: { now: number; revoked: ReadonlySet<string> },
): "expired" | "revoked" | null {
  if (options.now >= identity.expiresAt) return "expired";
  if (options.revoked.has(identity.id)) return "revoked";
  return null;
}
