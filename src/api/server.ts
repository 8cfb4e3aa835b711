import http from "node:http";
import https from "node:https";
import { ApolloServer } from "@apollo/server";
import { ApolloServerPluginDrainHttpServer } from "@apollo/server/plugin/drainHttpServer";
import { ApolloServerPluginCacheControlDisabled } from "@apollo/server/plugin/disabled";
import { expressMiddleware } from "@as-integrations/express5";
import express from "express";
import type { PubSub } from "type-graphql";
import { ErrorCode, RelevoError, isRelevoError } from "../errors";
import { promiseTry } from "../util/promise-try";
import { apiUrl } from "../config/api-transport";
import { authenticate } from "./auth/auth";
import { mutationAuditPlugin } from "./audit";
import { mutationRoleGatePlugin, refuseMutationEarly } from "./auth/mutation-gate";
import { RefusalCounter } from "./refusal-counter";
import type { ApiContext, ApiServices } from "./context";
import { codedGraphQLError, createFormatError } from "./errors";
import { graphiqlLandingPagePlugin } from "./graphiql";
import { healthRoutes } from "./health-routes";
import { MAX_REQUEST_BYTES, PARSE_OPTIONS, queryLimitsPlugin } from "./limits";
import { GRAPHQL_PATH, isJsonContentType, originForm, targetsGraphqlPath } from "./graphql-route";
import {
  RateLimiter,
  clientAddress,
  rateLimitedClient,
  rateTokensForDocument,
  type RateLimitedClient,
  rateLimitedError,
  type RateLimitOptions,
} from "./rate-limit";
import { createSchema } from "./schema";
import { TopologyResponseCache } from "./topology-response-cache";
import type { SocketLimits } from "./socket-admission";
import { serveGraphqlOverWebSocket } from "./websocket";

export interface ApiServerOptions {
  readonly host: string;
  readonly port: number;
  readonly maxDepth: number;
  readonly maxComplexity: number;
  readonly rateLimit: RateLimitOptions;
  /** Refused requests are reported per token (or address) once per this window (RefusalCounter). */
  readonly refusalWindowMs: number;
  readonly socketLimits: SocketLimits;
  /** HTTPS (and wss://) with this certificate and key (PEM); absent: plain HTTP (see src/config/api-transport.ts). */
  readonly tls?: ApiCertificate;
}

export interface RunningApi {
  readonly url: string;
  readonly port: number;
  /**
   * HTTPS only: the certificate and key given to every TLS connection
   * accepted from now on (a rotation; connections open keep theirs).
   * INVALID_CONFIG, and the previous pair kept, when they do not make a
   * TLS context.
   */
  readonly replaceCertificate: ((tls: ApiCertificate) => void) | null;
  stop(): Promise<void>;
}

/** The API's certificate (its chain after it) and key, PEM. */
export interface ApiCertificate {
  readonly certificatePem: string;
  readonly keyPem: string;
}

/**
 * One HTTP server for everything: POST /graphql (Apollo), GraphiQL on GET
 * /graphql, graphql-ws subscriptions on the same path, and the health routes;
 * HTTPS when given a certificate (the WebSocket is then wss:// on the same port).
 * (startStandaloneServer hides its HTTP server, so it cannot share the port
 * with graphql-ws.)
 */
export async function startApiServer(services: ApiServices, pubSub: PubSub, options: ApiServerOptions): Promise<RunningApi> {
  const schema = await createSchema(services, pubSub);
  const responseCache = new TopologyResponseCache(services.topology, services.tokens);
  const refusals = new RefusalCounter(services.events, options.refusalWindowMs);
  const app = express();
  // Apollo's routes match GRAPHQL_PATH only, exactly (see graphql-route.ts); the router reads these when it is made.
  app.set("case sensitive routing", true);
  app.set("strict routing", true);
  // An error escaping `handle` would be an unhandled rejection, which ends the process (and the failover monitor in it).
  const answer = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    handle(req, res).catch((error: unknown) => {
      services.logger.error({ err: error instanceof Error ? error.message : String(error) }, "unexpected error answering an HTTP request");
      if (!res.headersSent) res.writeHead(500, { "content-type": "application/json; charset=utf-8" });
      res.end(JSON.stringify({ errors: [{ message: "internal error", extensions: { code: ErrorCode.Internal } }] }));
    });
  };
  const secure = (tls: ApiCertificate): https.ServerOptions => ({ cert: tls.certificatePem, key: tls.keyPem, minVersion: "TLSv1.2" });
  const httpsServer = options.tls ? https.createServer(secure(options.tls), answer) : null;
  const httpServer: http.Server = httpsServer ?? http.createServer(answer);
  const limits = { maxDepth: options.maxDepth, maxComplexity: options.maxComplexity };
  const rateLimiter = new RateLimiter(services.redis, services.keys.rateLimit, options.rateLimit, services.logger);
  const formatError = createFormatError(services.logger);
  // Every request that reaches Apollo takes one token from its client's bucket, once: in `handle` for
  // GRAPHQL_PATH (before the body is read), and again on Apollo's own routes for any request `handle` did not
  // charge, so that no spelling of a target can reach Apollo uncounted.
  const clients = new WeakMap<http.IncomingMessage, RateLimitedClient>();
  const chargeRateLimit = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<boolean> => {
    if (clients.has(req)) return true;
    const client = rateLimitedClient(services.tokens, req.headers.authorization, clientAddress(req));
    clients.set(req, client);
    return take(client, 1, res);
  };
  // What a request's body costs beyond its first token, once its size is known (rateTokensForDocument).
  const chargeBody = (req: http.IncomingMessage, res: http.ServerResponse, bytes: number): Promise<boolean> => {
    const client = clients.get(req);
    return client ? take(client, rateTokensForDocument(bytes) - 1, res) : Promise.resolve(true);
  };
  const take = async (client: RateLimitedClient, count: number, res: http.ServerResponse): Promise<boolean> => {
    const verdict = await rateLimiter.take(client, count);
    if (verdict.phase === "allowed") return true;
    // Counted like every refusal (RefusalCounter), not recorded one by one: against the token, or without one the address.
    refusals.count(client.kind === "token" ? { kind: "token", identity: client.identity } : { kind: "address", address: client.id }, [
      ErrorCode.RateLimited,
    ]);
    const error = rateLimitedError(verdict.retryAfterSeconds);
    res.writeHead(429, { "content-type": "application/json; charset=utf-8", "retry-after": String(verdict.retryAfterSeconds) });
    res.end(JSON.stringify({ errors: [{ message: error.message, extensions: error.extensions }] }));
    return false;
  };
  const refuseUnauthenticated = (client: Extract<RateLimitedClient, { kind: "address" }>, res: http.ServerResponse): void => {
    const refusal = client.refusal ?? new RelevoError(ErrorCode.Unauthenticated, "a bearer token is required");
    refusals.count({ kind: "address", address: client.id }, [refusal.code]);
    res.writeHead(401, { "content-type": "application/json; charset=utf-8", connection: "close" });
    res.end(JSON.stringify({ errors: [{ message: refusal.message, extensions: { code: refusal.code } }] }));
  };
  // JSON bodies for GRAPHQL_PATH are read here so that a cached topology answer
  // skips Express entirely; body-parser sees `_body` and does not read again.
  // The rate limit comes first, before the body is even read.
  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    req.url = originForm(req.url);
    if (targetsGraphqlPath(req.url)) {
      if (!(await chargeRateLimit(req, res))) return;
      if (req.method === "POST" && isJsonContentType(req.headers["content-type"])) {
        // Without an accepted token nothing of the body is read (review 14: a body that never ends held up to
        // 256 KiB for minutes): answered as Apollo would, counted, and the connection closed.
        const client = clients.get(req);
        if (client?.kind === "address") return refuseUnauthenticated(client, res);
        // Its declared size is charged before it is read; a chunked body's once it has arrived.
        const declared = declaredLength(req);
        if (declared !== null && !(await chargeBody(req, res, Math.min(declared, MAX_REQUEST_BYTES)))) return;
        const body = await readJsonBody(req, MAX_REQUEST_BYTES);
        // A body cut short was not parsed (no work to charge); the connection closes after the answer.
        if (declared === null && (body.phase !== "invalid" || !body.tooLarge)) {
          if (!(await chargeBody(req, res, body.bytes))) return;
        }
        if (body.phase === "invalid") {
          res.writeHead(400, { "content-type": "application/json; charset=utf-8", ...(body.tooLarge ? { connection: "close" } : {}) });
          res.end(JSON.stringify({ errors: [{ message: body.reason, extensions: { code: ErrorCode.BadUserInput } }] }));
          return;
        }
        if (refuseMutationEarly(services.tokens, refusals, req, res, body.value)) return;
        Object.assign(req, { body: body.value, _body: true });
        if (await responseCache.serve(req, res, body.value)) return;
      }
    }
    app(req, res);
  };
  const wsCleanup = serveGraphqlOverWebSocket(httpServer, {
    schema,
    tokens: services.tokens,
    limits,
    rateLimiter,
    refusals,
    socketLimits: options.socketLimits,
    formatError,
    logger: services.logger,
  });
  const apollo = new ApolloServer<ApiContext>({
    schema,
    formatError,
    includeStacktraceInErrorResponses: false,
    // Relevo owns shutdown order (API, collector, consolidator, Redis, nodes).
    stopOnTerminationSignals: false,
    // No automatic persisted queries: a hash sent by GET would run a registered query without a `query` to see.
    persistedQueries: false,
    parseOptions: PARSE_OPTIONS,
    plugins: [
      ApolloServerPluginDrainHttpServer({ httpServer }),
      // No HTTP caching of this API's answers; without it Apollo does not wrap every field resolver.
      ApolloServerPluginCacheControlDisabled(),
      {
        serverWillStart() {
          return Promise.resolve({
            async drainServer() {
              await wsCleanup.dispose();
            },
          });
        },
      },
      queryLimitsPlugin<ApiContext>(schema, limits, {
        // The request took one token on arrival; an operation takes the rest of its cost once it is known.
        onAdmitted: async ({ cost, contextValue }) => {
          const verdict = await rateLimiter.takeRestOfCost(contextValue.identity, cost);
          if (verdict.phase === "allowed") return;
          // Counted by the audit plugin, as every refusal before execution.
          throw rateLimitedError(verdict.retryAfterSeconds, { overHttp: true });
        },
      }),
      mutationRoleGatePlugin(),
      mutationAuditPlugin(services.events, refusals),
      responseCache.plugin(),
      graphiqlLandingPagePlugin(),
    ],
  });
  await apollo.start();
  const rateLimited: express.RequestHandler = (req, res, next) => {
    chargeRateLimit(req, res).then((allowed) => (allowed ? next() : undefined), next);
  };
  const graphql = expressMiddleware(apollo, {
    context: ({ req }): Promise<ApiContext> =>
      promiseTry(() => {
        try {
          return { identity: authenticate(services.tokens, req.headers.authorization) };
        } catch (error) {
          if (!isRelevoError(error)) throw error;
          // No token accepted, so no token to count it against: its address.
          refusals.count({ kind: "address", address: clientAddress(req) }, [error.code]);
          throw codedGraphQLError(error.code, error.message);
        }
      }),
  });
  // The JSON parser on GET too: Apollo's middleware answers 500 when it finds no req.body, and the parser sets one.
  const json = express.json({ limit: MAX_REQUEST_BYTES });
  app.post(GRAPHQL_PATH, rateLimited, json, graphql);
  app.get(GRAPHQL_PATH, rateLimited, json, graphql);
  app.use(healthRoutes(services));
  // A request must arrive whole in bounded time: its headers within 10 s, its body within 30 s (Node's defaults,
  // 60 s and 300 s, let a client that sends slowly hold a connection and its buffered body for minutes).
  httpServer.headersTimeout = REQUEST_HEADERS_TIMEOUT_MS;
  httpServer.requestTimeout = REQUEST_TIMEOUT_MS;
  await listen(httpServer, options);
  const address = httpServer.address();
  const port = typeof address === "object" && address ? address.port : options.port;
  return {
    url: apiUrl({ host: options.host, port, https: options.tls !== undefined }),
    port,
    replaceCertificate: httpsServer && ((tls: ApiCertificate) => replaceSecureContext(httpsServer, secure(tls))),
    stop: async () => {
      await apollo.stop();
      await refusals.flush();
      await new Promise<void>((resolve) => httpServer.close(() => resolve()));
    },
  };
}

/** A JSON body as read, and how many bytes came (all of them, also past the limit: they were received). */
type BodyRead = (
  | { readonly phase: "parsed"; readonly value: unknown }
  /** `tooLarge`: the rest of the body was left unread, so the connection must close after the answer. */
  | { readonly phase: "invalid"; readonly reason: string; readonly tooLarge?: boolean }
) & {
  readonly bytes: number;
};

const REQUEST_HEADERS_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 30_000;

/** A request's Content-Length when it declares a valid one; null for a chunked body (or a malformed header). */
function declaredLength(req: http.IncomingMessage): number | null {
  const header = req.headers["content-length"];
  if (header === undefined || !/^\d{1,15}$/.test(header)) return null;
  return Number(header);
}

function readJsonBody(req: http.IncomingMessage, limit: number): Promise<BodyRead> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) return void chunks.push(chunk);
      // Not one byte more is read: the answer closes the connection (see tooLarge).
      req.pause();
      req.removeAllListeners("data");
      resolve({ phase: "invalid", reason: `request body larger than ${limit} bytes`, bytes: size, tooLarge: true });
    });
    req.on("end", () => {
      try {
        resolve({ phase: "parsed", value: JSON.parse(Buffer.concat(chunks).toString("utf8")), bytes: size });
      } catch {
        resolve({ phase: "invalid", reason: "request body is not valid JSON", bytes: size });
      }
    });
    req.on("error", () => resolve({ phase: "invalid", reason: "request body could not be read", bytes: size }));
  });
}

function listen(server: http.Server, options: ApiServerOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException): void => {
      reject(
        error.code === "EADDRINUSE"
          ? new RelevoError(
              ErrorCode.PortInUse,
              `port ${options.port} on ${options.host} (the API) is already in use; set RELEVO_API_PORT to a free port`,
              {
                details: { port: options.port, env: "RELEVO_API_PORT" },
              },
            )
          : error,
      );
    };
    server.once("error", onError);
    server.listen(options.port, options.host, () => {
      server.off("error", onError);
      resolve();
    });
  });
}

/** setSecureContext, whose failure (a key of another certificate, a malformed PEM) leaves the previous context in place. */
function replaceSecureContext(server: https.Server, options: https.ServerOptions): void {
  try {
    server.setSecureContext(options);
  } catch (error) {
    throw new RelevoError(
      ErrorCode.InvalidConfig,
      `the API's new certificate and key do not make a TLS context: ${(error as Error).message}`,
      {
        cause: error,
      },
    );
  }
}
