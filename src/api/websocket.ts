import type http from "node:http";
import type { GraphQLFormattedError, GraphQLSchema } from "graphql";
import { GraphQLError } from "graphql";
import { useServer } from "graphql-ws/use/ws";
import { WebSocketServer, type ServerOptions } from "ws";
import { ErrorCode } from "../errors";
import type { Logger } from "../log";
import type { TokenAccess } from "../secrets/token-access";
import { connectSocket, SocketSessions } from "./auth/socket-sessions";
import type { ApiContext } from "./context";
import { codedGraphQLError } from "./errors";
import { MAX_REQUEST_BYTES, admitOperation, isMutation, type OperationLimits } from "./limits";
import { GRAPHQL_PATH } from "./graphql-route";
import { clientAddress, rateLimitedError, rateTokensForDocument, type RateLimiter } from "./rate-limit";
import { SocketAdmission, type SocketLimits } from "./socket-admission";
import type { RefusalCounter } from "./refusal-counter";

export interface WebSocketApiOptions {
  readonly schema: GraphQLSchema;
  readonly tokens: TokenAccess;
  readonly limits: OperationLimits;
  readonly rateLimiter: RateLimiter;
  /** Refused operations are counted per token (without an accepted token, per address), as over HTTP. */
  readonly refusals: RefusalCounter;
  readonly socketLimits: SocketLimits;
  readonly logger: Logger;
  /** The HTTP path's formatError: the same masking on both paths. */
  readonly formatError: (formatted: GraphQLFormattedError, error: unknown) => GraphQLFormattedError;
}

/**
 * How long a socket may stay open without `connection_init` (graphql-ws then
 * closes it with 4408): all an unauthenticated socket may do meanwhile is
 * ping, in frames of at most MAX_REQUEST_BYTES.
 */
const CONNECTION_INIT_WAIT_MS = 3000;
/** How long a closing socket waits for its peer's close frame before it is destroyed. */
const WEBSOCKET_CLOSE_TIMEOUT_MS = 1000;

/**
 * GraphQL over WebSocket (graphql-ws) on the HTTP server's /graphql, under
 * the same admission as POST /graphql: frames of at most MAX_REQUEST_BYTES
 * (a bigger one closes the socket with 1009, before connection_init too, so
 * nobody buffers 100 MiB unauthenticated), a token in connection_init, then
 * for each operation the rate limit, parse, validation, depth and cost limits
 * (admitOperation), and errors formatted by the one formatError.
 *
 * Mutations are refused here (MUTATION_OVER_WEBSOCKET): they are accepted
 * over HTTP only, where each goes through the mutation audit; the socket
 * is for subscriptions (and queries, as GraphiQL sends them).
 */
export function serveGraphqlOverWebSocket(httpServer: http.Server, options: WebSocketApiOptions): { dispose(): void | Promise<void> } {
  const { schema, tokens, limits, rateLimiter, refusals, socketLimits, formatError, logger } = options;
  const socketAdmission = new SocketAdmission(socketLimits);
  // ws 8.23 takes closeTimeout; its type declarations do not list it yet.
  const serverOptions: ServerOptions & { readonly closeTimeout: number } = {
    server: httpServer,
    path: GRAPHQL_PATH,
    maxPayload: MAX_REQUEST_BYTES,
    // A peer that does not answer a close (one graphql-ws sends after 3 s without connection_init) holds its slot
    // until this: ws's 30 s default let a silent client keep its sockets ten times longer than the init bound.
    closeTimeout: WEBSOCKET_CLOSE_TIMEOUT_MS,
    // Before the handshake: a socket over the bounds is answered with an HTTP status and never becomes a WebSocket.
    verifyClient: (info: { req: http.IncomingMessage }, done: (admitted: boolean, status?: number, message?: string) => void) => {
      const address = clientAddress(info.req);
      const verdict = socketAdmission.admitUpgrade(info.req, address);
      if (verdict.phase === "admitted") return done(true);
      refusals.count({ kind: "address", address }, [ErrorCode.TooManyConnections]);
      done(false, verdict.status, verdict.message);
    },
  };
  const wsServer = new WebSocketServer(serverOptions);
  const sessions = new SocketSessions(tokens);
  const format = (errors: readonly GraphQLError[]): GraphQLFormattedError[] => errors.map((error) => formatError(error.toJSON(), error));
  const server = useServer<Record<string, unknown>, { identity?: ApiContext["identity"] }>(
    {
      schema,
      connectionInitWaitTimeout: CONNECTION_INIT_WAIT_MS,
      // A missing or forged token closes with 4403; an expired or revoked one with 4401 and its code; one
      // token's socket over its share with 1013 (see connectSocket).
      onConnect: (ctx) => {
        const connection = connectSocket(sessions, tokens, ctx, socketLimits.maxSocketsPerToken);
        if (connection.phase === "admitted") {
          socketAdmission.authenticated(ctx.extra.request);
          return true;
        }
        const { refusal, identity } = connection;
        refusals.count(identity ? { kind: "token", identity } : { kind: "address", address: clientAddress(ctx.extra.request) }, [
          refusal.code,
        ]);
        return false;
      },
      onSubscribe: async (ctx, _id, payload) => {
        // graphql-ws refuses a subscribe message before the connection is acknowledged, so the identity is set.
        const identity = ctx.extra.identity!;
        // The token is checked again for every operation: it may have expired or been revoked since connection_init.
        const refusal = sessions.recheck(ctx.extra.socket);
        if (refusal) {
          // The socket is closed; the refusal is counted against the address, as one over HTTP would be.
          refusals.count({ kind: "address", address: clientAddress(ctx.extra.request) }, [refusal.code]);
          return [codedGraphQLError(refusal.code, refusal.message)];
        }
        const refused = (errors: readonly GraphQLError[]): readonly GraphQLError[] => {
          refusals.count(
            { kind: "token", identity },
            errors.map((error) => (typeof error.extensions.code === "string" ? error.extensions.code : ErrorCode.BadUserInput)),
          );
          return errors;
        };
        // graphql-ws has recorded this operation already: it counts itself.
        const running = Object.keys(ctx.subscriptions).length;
        if (running > socketLimits.maxOperationsPerSocket) {
          return refused([
            codedGraphQLError(
              ErrorCode.TooManyConnections,
              `this WebSocket runs ${socketLimits.maxOperationsPerSocket} operations already: complete one first, or open another socket`,
            ),
          ]);
        }
        // The document's size is work before its cost is known (parse, validation): charged on arrival.
        const verdict = await rateLimiter.take({ kind: "token", id: identity.id, identity }, rateTokensForDocument(payload.query.length));
        if (verdict.phase === "limited") return refused([rateLimitedError(verdict.retryAfterSeconds)]);
        const admission = admitOperation(schema, payload, limits);
        if (admission.phase === "refused") return refused(admission.errors);
        // The rest of the operation's cost, now that it is known (one token was taken on arrival).
        const charged = await rateLimiter.takeRestOfCost(identity, admission.cost);
        if (charged.phase === "limited") return refused([rateLimitedError(charged.retryAfterSeconds)]);
        if (isMutation(admission.operation)) {
          return refused([
            codedGraphQLError(
              ErrorCode.MutationOverWebSocket,
              "mutations are accepted over HTTP only (POST /graphql), where each is audited; use the WebSocket for subscriptions and queries",
            ),
          ]);
        }
        const contextValue: ApiContext = { identity };
        return {
          schema,
          document: admission.document,
          operationName: payload.operationName,
          variableValues: payload.variables,
          contextValue,
        };
      },
      onError: (_ctx, _id, _payload, errors) => format(errors),
      onNext: (_ctx, _id, _payload, _args, result) =>
        result.errors ? { ...result, errors: format(result.errors.map((error) => toGraphQLError(error))) } : undefined,
    },
    wsServer,
  );
  // A socket's errors are its peer's doing (an oversize frame, a protocol violation, a reset), and ws has already
  // closed it (1009 for a frame over maxPayload). graphql-ws prints each to the console with its stack as an
  // "internal error", which would let any client write to the service's output at will: replace that listener
  // (registered by graphql-ws's own "connection" handler, which runs before this one).
  wsServer.on("connection", (socket) => {
    socket.removeAllListeners("error");
    socket.on("error", (error: Error & { code?: string }) =>
      logger.debug({ code: error.code, err: error.message }, "WebSocket closed on a client error"),
    );
  });
  return {
    dispose: async () => {
      sessions.dispose();
      await server.dispose();
    },
  };
}

function toGraphQLError(error: GraphQLError | Error): GraphQLError {
  return error instanceof GraphQLError ? error : new GraphQLError(error.message, { originalError: error });
}
