import type { GraphQLError } from "graphql";
import type { IncomingMessage } from "node:http";
import type Redis from "ioredis";
import { ErrorCode, RelevoError, isRelevoError } from "../errors";
import type { Logger } from "../log";
import type { TokenAccess } from "../secrets/token-access";
import type { TokenIdentity } from "../secrets/tokens";
import { authenticate } from "./auth/auth";
import { codedGraphQLError } from "./errors";

export interface RateLimitOptions {
  /** Tokens per second a bucket refills (an operation takes at least one); 0 turns the limit off. */
  readonly perSecond: number;
  /** The bucket's size: what a client may spend at once. */
  readonly burst: number;
}

/**
 * The cost (limits.ts) one bucket token pays for. Operations differ a
 * thousandfold in work (a cached `cluster` answer; 100 aliases of a filtered
 * `events` that decode up to 50 000 stream entries, some 200 ms of the event
 * loop), so counting operations alone let one token keep the event loop
 * busy at the default rate (review 12). Charged by cost, a token's event-loop
 * time per second is bounded by `perSecond * COST_PER_RATE_TOKEN` cost
 * units: at the defaults (50/s) one operation of the largest cost allowed
 * (5000) every two seconds, while ordinary queries (cost under 50) still
 * take one token each.
 */
export const COST_PER_RATE_TOKEN = 50;

/**
 * Bytes of a request one bucket token pays for on arrival. Parsing and
 * validating a document is work done before its cost is known: GraphQL's
 * overlapping-fields rule took 140 ms for 55 KB of aliases of one field on
 * this machine (graphql 16), so a client sending 256 KiB documents at the
 * operation rate would keep the event loop busy. Charged by size, a 55 KB
 * document takes 54 tokens, and a client gets about one per second at the
 * default rate; an ordinary query (under 1 KiB) takes one, as before.
 */
export const DOCUMENT_BYTES_PER_RATE_TOKEN = 1024;

/** The bucket tokens a request of `bytes` takes on arrival: one per DOCUMENT_BYTES_PER_RATE_TOKEN, at least one. Pure. */
export function rateTokensForDocument(bytes: number): number {
  return Math.max(1, Math.ceil(bytes / DOCUMENT_BYTES_PER_RATE_TOKEN));
}

/** The bucket tokens an operation of `cost` takes in all: one per COST_PER_RATE_TOKEN, at least one. Pure. */
export function rateTokensFor(cost: number): number {
  return Math.max(1, Math.ceil(cost / COST_PER_RATE_TOKEN));
}

export type RateVerdict = { readonly phase: "allowed" } | { readonly phase: "limited"; readonly retryAfterSeconds: number };

/**
 * A token bucket per key, kept in Redis so that every instance of the
 * service draws from the same one. One script does the refill, the take and
 * the expiry atomically, with Redis's own clock (instances' clocks may
 * disagree; the bucket must not). The bucket is a hash of its tokens and the
 * time they were counted; it expires once it would be full again anyway.
 */
const TOKEN_BUCKET_SCRIPT = `
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local per_second = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * per_second / 1000)
local wait_ms = 0
if tokens >= wanted then
  tokens = tokens - wanted
else
  wait_ms = math.ceil((wanted - tokens) * 1000 / per_second)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / per_second) + 1000)
return wait_ms
`;

/**
 * How long an operation waits for its rate-limit answer before it is let
 * through unchecked: every HTTP request and WebSocket operation waits on
 * the take, so without a bound a frozen Redis would hang the whole API.
 * Far above a healthy local round trip (well under a millisecond).
 */
export const RATE_LIMIT_WAIT_MS = 150;

/** `pending`'s outcome, or a rejection once `ms` passed without one (a late outcome is then ignored). */
function answeredWithin<T>(pending: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`Redis did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([pending, timeout]).finally(() => clearTimeout(timer));
}

/**
 * The per-client rate limit of the API: an operation (an HTTP request, a
 * WebSocket subscribe message) takes one token from the client's bucket on
 * arrival, before it is read further, and once its cost is known (after the
 * cost limit admitted it) the rest of `rateTokensFor(cost)`. The cost limit
 * bounds the work of one operation; this bounds the work a client runs per
 * second.
 */
export class RateLimiter {
  private scriptSha: string | null = null;

  constructor(
    private readonly redis: Redis,
    private readonly keyPrefix: string,
    private readonly options: RateLimitOptions,
    private readonly logger: Logger,
  ) {}

  /**
   * Takes `count` tokens from `client`'s bucket, all or none (at most the
   * bucket's size: an operation costlier than a full bucket still runs from
   * a full one). When Redis cannot answer, the
   * operation is let through: whatever it needs of Redis fails fast on its
   * own (SERVICE_UNAVAILABLE), and what it does not need (a cached topology
   * answer) must keep working through a Redis outage. "Cannot answer"
   * includes a Redis that is connected but silent (stopped, swapping, stuck
   * in a long command): the connection is up, so the command neither fails
   * nor times out by itself; after RATE_LIMIT_WAIT_MS the take gives up.
   */
  async take(client: RateLimitedClient, count = 1): Promise<RateVerdict> {
    if (this.options.perSecond <= 0 || count <= 0) return { phase: "allowed" };
    const key = `${this.keyPrefix}:${client.kind}:${client.id}`;
    const args = [String(this.options.perSecond), String(this.options.burst), String(Math.min(count, this.options.burst))];
    let waitMs: number;
    try {
      waitMs = Number(await answeredWithin(this.evaluate(key, args), RATE_LIMIT_WAIT_MS));
    } catch (error) {
      this.logger.debug({ err: (error as Error).message }, "rate limit not checked: Redis is unavailable");
      return { phase: "allowed" };
    }
    return waitMs > 0 ? { phase: "limited", retryAfterSeconds: Math.max(1, Math.ceil(waitMs / 1000)) } : { phase: "allowed" };
  }

  /**
   * The rest of what an admitted operation of `cost` takes: it took one
   * token on arrival, before its cost was known.
   */
  takeRestOfCost(identity: TokenIdentity, cost: number): Promise<RateVerdict> {
    return this.take({ kind: "token", id: identity.id, identity }, rateTokensFor(cost) - 1);
  }

  private async evaluate(key: string, args: string[]): Promise<unknown> {
    if (this.scriptSha) {
      try {
        return await this.redis.evalsha(this.scriptSha, 1, key, ...args);
      } catch (error) {
        // Redis restarted without its script cache: load it again below.
        if (!(error as Error).message.includes("NOSCRIPT")) throw error;
      }
    }
    this.scriptSha = (await this.redis.script("LOAD", TOKEN_BUCKET_SCRIPT)) as string;
    return this.redis.evalsha(this.scriptSha, 1, key, ...args);
  }
}

/**
 * Whose bucket an operation draws from: a token's id, or the address of a
 * client without a valid token (`refusal`: why its token, if any, was not
 * accepted).
 */
export type RateLimitedClient =
  | { readonly kind: "token"; readonly id: string; readonly identity: TokenIdentity }
  | { readonly kind: "address"; readonly id: string; readonly refusal?: RelevoError };

/** The bucket of an HTTP request: its token's when the token is valid, else its address's (so bad tokens cannot mint buckets). */
export function rateLimitedClient(tokens: TokenAccess, authorization: string | undefined, address: string): RateLimitedClient {
  try {
    const identity = authenticate(tokens, authorization);
    return { kind: "token", id: identity.id, identity };
  } catch (error) {
    // Fail closed: whatever went wrong, the request has no accepted token.
    const refusal = isRelevoError(error) ? error : new RelevoError(ErrorCode.Unauthenticated, "the token could not be checked");
    return { kind: "address", id: address, refusal };
  }
}

/** The peer's address of a request or socket ("unknown" once its socket is gone: Node then reports none). */
export function clientAddress(req: Pick<IncomingMessage, "socket">): string {
  return req.socket.remoteAddress ?? "unknown";
}

/**
 * RATE_LIMITED, saying when to retry. `overHttp`: for Apollo, which then
 * answers 429 with Retry-After (and strips `http` from the extensions).
 */
export function rateLimitedError(retryAfterSeconds: number, options: { readonly overHttp?: boolean } = {}): GraphQLError {
  const http = options.overHttp ? { http: { status: 429, headers: new Map([["retry-after", String(retryAfterSeconds)]]) } } : {};
  return codedGraphQLError(
    ErrorCode.RateLimited,
    `too many API operations for this token; retry after ${retryAfterSeconds} s (RELEVO_API_RATE_LIMIT_PER_SECOND, RELEVO_API_RATE_LIMIT_BURST)`,
    { retryAfterSeconds, ...http },
  );
}
