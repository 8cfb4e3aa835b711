import type { AuthChecker } from "type-graphql";
import { ErrorCode, RelevoError } from "../../errors";
import type { TokenAccess } from "../../secrets/token-access";
import { roleAllows, type Role, type TokenIdentity } from "../../secrets/tokens";
import type { ApiContext } from "../context";

/**
 * Every GraphQL request needs a bearer token; this runs before any field
 * resolves. Role checks per field are `@Authorized(role)` (see authChecker).
 * Refusals: UNAUTHENTICATED (none, forged, another home's, or from before
 * tokens expired), TOKEN_EXPIRED, TOKEN_REVOKED; all HTTP 401.
 */
export function authenticate(tokens: TokenAccess, authorization: string | undefined | null): TokenIdentity {
  const token = bearerToken(authorization);
  if (token === null) {
    throw new RelevoError(
      ErrorCode.Unauthenticated,
      "a bearer token is required: send `Authorization: Bearer <token>` (see `relevo token`)",
    );
  }
  const check = tokens.check(token);
  if (check.phase === "refused") throw check.error;
  return check.identity;
}

export function bearerToken(authorization: string | undefined | null): string | null {
  const match = /^Bearer\s+(\S+)$/i.exec(authorization?.trim() ?? "");
  return match ? match[1]! : null;
}

/**
 * `@Authorized("operator")`: the token's role must be at least the one named.
 * (A WebSocket whose token is refused after it was opened is closed, and its
 * operations with it: see SocketSessions.)
 */
export const authChecker: AuthChecker<ApiContext, Role> = ({ context }, roles) => {
  const required: Role = roles.includes("operator") ? "operator" : "viewer";
  if (!roleAllows(context.identity.role, required)) {
    throw new RelevoError(ErrorCode.Forbidden, `this needs an ${required} token; yours is a ${context.identity.role} token`);
  }
  return true;
};
