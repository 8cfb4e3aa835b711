import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";

export type Role = "viewer" | "operator";
export const ROLES: readonly Role[] = ["viewer", "operator"];

export interface TokenIdentity {
  /** Short random id: names the token in the audit trail without revealing it. */
  readonly id: string;
  readonly role: Role;
}

const PREFIX = "rlv";

/**
 * Stateless bearer tokens: `rlv.<role>.<id>.<hmac>`, signed with the data
 * home's token key. Any token minted for the home (by `relevo up` or
 * `relevo token`) is valid until the key is rotated.
 */
export function mintToken(key: string, role: Role): string {
  const id = randomBytes(6).toString("hex");
  return `${PREFIX}.${role}.${id}.${sign(key, role, id)}`;
}

export function verifyToken(key: string, token: string): TokenIdentity | null {
  const parts = token.split(".");
  if (parts.length !== 4 || parts[0] !== PREFIX) return null;
  const [, role, id, signature] = parts as [string, string, string, string];
  if (!ROLES.includes(role as Role) || !/^[0-9a-f]{12}$/.test(id)) return null;
  const expected = Buffer.from(sign(key, role, id));
  const given = Buffer.from(signature);
  if (expected.length !== given.length || !timingSafeEqual(expected, given)) return null;
  return { id, role: role as Role };
}

function sign(key: string, role: string, id: string): string {
  return createHmac("sha256", key).update(`${PREFIX}.${role}.${id}`).digest("base64url");
}

export function roleAllows(granted: Role, required: Role): boolean {
  return ROLES.indexOf(granted) >= ROLES.indexOf(required);
}

/**
 * Verifies tokens with a bounded memo: an API client sends the same token
 * with every request, and an HMAC per request is measurable at 1000 req/s.
 * Only valid tokens are remembered, so garbage cannot fill the memo.
 */
export class TokenVerifier {
  private readonly memo = new Map<string, TokenIdentity>();

  constructor(
    private readonly key: string,
    private readonly capacity = 1000,
  ) {}

  verify(token: string): TokenIdentity | null {
    const known = this.memo.get(token);
    if (known) return known;
    const identity = verifyToken(this.key, token);
    if (identity) {
      if (this.memo.size >= this.capacity) this.memo.delete(this.memo.keys().next().value!);
      this.memo.set(token, identity);
    }
    return identity;
  }
}
