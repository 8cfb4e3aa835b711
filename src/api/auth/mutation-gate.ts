import type { ApolloServerPlugin } from "@apollo/server";
import type { IncomingMessage, ServerResponse } from "node:http";
import { getOperationAST, OperationTypeNode, parse } from "graphql";
import { ErrorCode } from "../../errors";
import { roleAllows } from "../../secrets/tokens";
import type { TokenAccess } from "../../secrets/token-access";
import type { ApiContext } from "../context";
import { codedGraphQLError } from "../errors";
import { PARSE_OPTIONS } from "../limits";
import type { RefusalCounter } from "../refusal-counter";
import { bearerToken } from "./auth";

/**
 * Every mutation needs an operator token (each is `@Authorized("operator")`
 * too): a lesser token's mutation is refused once, before execution, not
 * once per aliased field. A viewer sending 2000 aliases of a mutation costs
 * a parse and one error, not 2000 resolver calls, errors and log lines.
 */
export function mutationRoleGatePlugin(): ApolloServerPlugin<ApiContext> {
  return {
    requestDidStart() {
      return Promise.resolve({
        didResolveOperation({ operation, contextValue }) {
          if (operation?.operation !== OperationTypeNode.MUTATION || roleAllows(contextValue.identity.role, "operator")) {
            return Promise.resolve();
          }
          return Promise.reject(
            codedGraphQLError(ErrorCode.Forbidden, `mutations need an operator token; yours is a ${contextValue.identity.role} token`),
          );
        },
      });
    },
  };
}

/**
 * The same refusal, earlier: before Apollo parses with locations, validates
 * (quadratic in aliases of one field) and estimates cost. A request whose
 * token is accepted but may not mutate, and whose operation is a mutation, is
 * answered here with FORBIDDEN and counted; anything else (no token, a
 * refused token, a query, a body that does not parse) goes on to Apollo,
 * which answers it as usual. Returns whether it answered.
 */
export function refuseMutationEarly(
  tokens: TokenAccess,
  refusals: RefusalCounter,
  req: IncomingMessage,
  res: ServerResponse,
  body: unknown,
): boolean {
  const { query, operationName } = (body ?? {}) as { query?: unknown; operationName?: unknown };
  // Most requests mention no mutation at all: those are not parsed twice.
  if (typeof query !== "string" || !query.includes("mutation")) return false;
  const token = bearerToken(req.headers.authorization);
  const check = token === null ? null : tokens.check(token);
  if (check?.phase !== "accepted" || roleAllows(check.identity.role, "operator")) return false;
  let operation;
  try {
    operation = getOperationAST(
      parse(query, { ...PARSE_OPTIONS, noLocation: true }),
      typeof operationName === "string" ? operationName : undefined,
    );
  } catch {
    return false;
  }
  if (operation?.operation !== OperationTypeNode.MUTATION) return false;
  refusals.count({ kind: "token", identity: check.identity }, [ErrorCode.Forbidden]);
  const message = `mutations need an operator token; yours is a ${check.identity.role} token`;
  const answer = Buffer.from(`${JSON.stringify({ errors: [{ message, extensions: { code: ErrorCode.Forbidden } }] })}\n`);
  res.writeHead(200, { "content-type": "application/json; charset=utf-8", "content-length": answer.length });
  res.end(answer);
  return true;
}
