import type { GraphQLFormattedError } from "graphql";
import { GraphQLError } from "graphql";
import { ArgumentValidationError } from "type-graphql";
import { ErrorCode, isRelevoError } from "../errors";
import type { Logger } from "../log";

const HTTP_STATUS: Partial<Record<ErrorCode, number>> = {
  [ErrorCode.Unauthenticated]: 401,
  [ErrorCode.TokenExpired]: 401,
  [ErrorCode.TokenRevoked]: 401,
  // The client's request is at fault, not the server: never a 500 (review 13).
  [ErrorCode.QueryTooDeep]: 400,
  [ErrorCode.QueryTooComplex]: 400,
};

/** A GraphQL error that carries one of our codes. */
export function codedGraphQLError(code: ErrorCode, message: string, extensions: Record<string, unknown> = {}): GraphQLError {
  const status = HTTP_STATUS[code];
  return new GraphQLError(message, { extensions: { code, ...extensions, ...(status ? { http: { status } } : {}) } });
}

/**
 * The one place domain errors become GraphQL errors: `extensions.code` is
 * always an ErrorCode (or one of GraphQL's own parse/validation codes).
 * Unexpected errors are logged and shown as INTERNAL without their details.
 */
export function createFormatError(logger: Logger) {
  return (formatted: GraphQLFormattedError, error: unknown): GraphQLFormattedError => {
    const original = error instanceof GraphQLError ? (error.originalError ?? error) : error;
    if (isRelevoError(original)) {
      return { ...formatted, message: original.message, extensions: { code: original.code, ...safeDetails(original.details) } };
    }
    if (original instanceof ArgumentValidationError) {
      return { ...formatted, extensions: { code: ErrorCode.BadUserInput } };
    }
    const code = formatted.extensions?.code;
    if (typeof code === "string" && code !== "INTERNAL_SERVER_ERROR") {
      const { stacktrace: _stacktrace, ...rest } = formatted.extensions ?? {};
      return { ...formatted, extensions: rest };
    }
    logger.error({ err: original instanceof Error ? original.message : String(original), path: formatted.path }, "unexpected API error");
    return { message: "internal error", path: formatted.path, locations: formatted.locations, extensions: { code: ErrorCode.Internal } };
  };
}

function safeDetails(details: Record<string, unknown>): Record<string, unknown> {
  const { stderr: _stderr, ...rest } = details;
  return rest;
}
