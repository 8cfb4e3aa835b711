import type { AuthChecker } from "type-graphql";
import { ErrorCode, RelevoError } from "../../errors";
import { roleAllows, type Role, type TokenIdentity, type TokenVerifier } from "../../secrets/tokens";
import type { ApiContext } from "../context";

/**
 * Every GraphQL request needs a bearer token; this runs before any field
 * resolves. Role checks per field are `@Authorized(role)` (see authChecker).
 */
export function authenticate(tokens: TokenVerifier, authorization: string | undefined | null): TokenIdentity {
  const match = /^Bearer\s+(\S+)$/i.exec(authorization?.trim() ?? "");
  if (!match) {
    throw new RelevoError(
      ErrorCode.Unauthenticated,
      "a bearer token is required: send `Authorization: Bearer <token>` (see `relevo token`)",
    );
  }
  const identity = tokens.verify(match[1]!);
  if (!identity) throw new RelevoError(ErrorCode.Unauthenticated, "the bearer token is not valid for this Relevo data home");
  return identity;
}

/** `@Authorized("operator")`: the token's role must be at least the one named. */
export const authChecker: AuthChecker<ApiContext, Role> = ({ context }, roles) => {
  const required: Role = roles.includes("operator") ? "operator" : "viewer";
  if (!roleAllows(context.identity.role, required)) {
    throw new RelevoError(ErrorCode.Forbidden, `this needs an ${required} token; yours is a ${context.identity.role} token`);
  }
  return true;
};
