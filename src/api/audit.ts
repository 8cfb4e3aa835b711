import type { ApolloServerPlugin } from "@apollo/server";
import { Kind, OperationTypeNode } from "graphql";
import { ErrorCode, isRelevoError } from "../errors";
import type { EventLog } from "../events/event-log";
import type { ApiContext } from "./context";

/**
 * Every mutation becomes an `api:mutation` event naming the token (its id,
 * never the token) and role: who did what, when, and whether it worked.
 */
export function mutationAuditPlugin(events: EventLog): ApolloServerPlugin<ApiContext> {
  return {
    requestDidStart() {
      return Promise.resolve({
        async willSendResponse({ operation, contextValue, errors }) {
          if (operation?.operation !== OperationTypeNode.MUTATION) return;
          const fields = operation.selectionSet.selections.flatMap((s) => (s.kind === Kind.FIELD ? [s.name.value] : []));
          const codes = (errors ?? []).map((error) => {
            const original = error.originalError;
            const code = error.extensions?.code;
            return isRelevoError(original) ? original.code : typeof code === "string" ? code : ErrorCode.Internal;
          });
          await events.emit({
            kind: "api:mutation",
            severity: "info",
            node: null,
            message: `${contextValue.identity.role} ${contextValue.identity.id} ran ${fields.join(", ")}${codes.length ? ` (failed: ${codes.join(", ")})` : ""}`,
            data: { operation: operation.name?.value ?? null, fields },
            actor: { id: contextValue.identity.id, role: contextValue.identity.role },
          });
        },
      });
    },
  };
}
