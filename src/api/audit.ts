import type { ApolloServerPlugin } from "@apollo/server";
import { Kind, OperationTypeNode, type GraphQLError, type OperationDefinitionNode } from "graphql";
import { ErrorCode, isRelevoError } from "../errors";
import type { EventDraft } from "../events/event-map";
import type { EventLog } from "../events/event-log";
import type { TokenIdentity } from "../secrets/tokens";
import type { ApiContext } from "./context";
import type { RefusalCounter } from "./refusal-counter";

/**
 * The admission rules' refusals, before anything runs: the token, its role,
 * the limits, the rate. A query or subscription stopped by one of these is
 * counted (RefusalCounter); one stopped by GraphQL's own parsing or
 * validation is a client's mistake, not counted. (A mutation that did not
 * run is counted whatever stopped it: see mutationAudit.)
 */
const REFUSAL_CODES = new Set<string>([
  ErrorCode.Forbidden,
  ErrorCode.Unauthenticated,
  ErrorCode.TokenExpired,
  ErrorCode.TokenRevoked,
  ErrorCode.QueryTooDeep,
  ErrorCode.QueryTooComplex,
  ErrorCode.RateLimited,
]);

/** At most this many distinct field names in an `api:mutation` event (the schema has fewer mutations). */
const MAX_FIELDS = 32;
const MAX_OPERATION_NAME = 100;

export type MutationAudit =
  | { readonly phase: "refused"; readonly codes: readonly string[] }
  | { readonly phase: "recorded"; readonly draft: EventDraft<"api:mutation"> };

/**
 * What a finished mutation leaves in the audit trail: stopped before it ran
 * (nothing executed: a refusal, a GET answered 405, anything) → counted, for
 * nothing happened but the request, and a request per event would let any
 * token fill the stream (review 13); else one `api:mutation` event of bounded
 * size, whatever the request's size: its distinct root fields (aliases
 * counted, not listed), the distinct error codes, the operation name cut
 * short. Pure.
 */
export function mutationAudit(
  operation: OperationDefinitionNode,
  identity: TokenIdentity,
  outcome: { readonly errorCodes: readonly string[]; readonly executed: boolean },
): MutationAudit {
  const codes = [...new Set(outcome.errorCodes)].sort();
  // Judged by whether anything ran, not by the codes: an alias that ran next to one refused with a refusal's code
  // must still leave its api:mutation event, and one that did not run leaves none, whatever stopped it.
  if (!outcome.executed) return { phase: "refused", codes: codes.length > 0 ? codes : [ErrorCode.Internal] };
  const called = operation.selectionSet.selections.flatMap((s) => (s.kind === Kind.FIELD ? [s.name.value] : []));
  const fields = [...new Set(called)].sort().slice(0, MAX_FIELDS);
  const operationName = operation.name?.value.slice(0, MAX_OPERATION_NAME) ?? null;
  const ran = fields.join(", ") + (called.length > fields.length ? ` (${called.length} calls)` : "");
  return {
    phase: "recorded",
    draft: {
      kind: "api:mutation",
      severity: "info",
      node: null,
      message: `${identity.role} ${identity.id} ran ${ran}${codes.length ? ` (failed: ${codes.join(", ")})` : ""}`,
      data: { operation: operationName, fields, calls: called.length },
      actor: { id: identity.id, role: identity.role },
    },
  };
}

/**
 * Every mutation becomes an `api:mutation` event naming the token (its id,
 * never the token) and role: who did what, when, and whether it worked;
 * refused ones are counted per token (see mutationAudit). A query or
 * subscription refused by the admission rules before it ran (its role,
 * depth, cost, rate) is counted the same way; one that fails GraphQL's own
 * parsing or validation is a client's mistake, answered but not counted
 * (its size was charged to the rate limit on arrival).
 */
export function mutationAuditPlugin(events: EventLog, refusals: RefusalCounter): ApolloServerPlugin<ApiContext> {
  return {
    requestDidStart() {
      return Promise.resolve({
        async willSendResponse({ operation, contextValue, errors, response }) {
          // Execution leaves a `data` entry (null too, when a non-null root field failed); a refusal before it leaves none.
          const executed = response.body.kind === "single" ? response.body.singleResult.data !== undefined : true;
          if (operation?.operation !== OperationTypeNode.MUTATION) {
            const codes = [...new Set((errors ?? []).map(errorCode))].sort();
            if (!executed && codes.length > 0 && codes.every((code) => REFUSAL_CODES.has(code))) {
              refusals.count({ kind: "token", identity: contextValue.identity }, codes);
            }
            return;
          }
          const audit = mutationAudit(operation, contextValue.identity, { errorCodes: (errors ?? []).map(errorCode), executed });
          if (audit.phase === "refused") refusals.count({ kind: "token", identity: contextValue.identity }, audit.codes);
          else await events.emit(audit.draft);
        },
      });
    },
  };
}

function errorCode(error: GraphQLError): string {
  const original = error.originalError;
  const code = error.extensions?.code;
  return isRelevoError(original) ? original.code : typeof code === "string" ? code : ErrorCode.Internal;
}
