import { createClient, type Client } from "graphql-ws";
import http from "node:http";
import https from "node:https";
import WebSocket from "ws";
import { testApiClientCas } from "./tls";

export interface GraphQLResponse<T = Record<string, unknown>> {
  status: number;
  data?: T | null;
  errors?: Array<{ message: string; extensions?: { code?: string } & Record<string, unknown>; path?: string[] }>;
}

/** A response as a test reads it (a subset of fetch's). */
export interface TestResponse {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  text(): Promise<string>;
  json(): Promise<unknown>;
}

/**
 * fetch for the test's API: over https (the API with RELEVO_API_TLS=on)
 * the server is verified against the test file's CAs, as the CLI verifies
 * it (Node's fetch takes no CA of its own); over http, fetch itself.
 * `ca` overrides the trust (a client trusting another CA).
 */
export async function testFetch(
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: string; ca?: string[] } = {},
): Promise<TestResponse> {
  if (!url.startsWith("https:")) {
    const response = await fetch(url, init);
    return {
      status: response.status,
      headers: Object.fromEntries(response.headers.entries()),
      text: () => response.text(),
      json: () => response.json(),
    };
  }
  const { ca, ...rest } = init;
  const body = await new Promise<{ status: number; headers: http.IncomingHttpHeaders; text: string }>((resolve, reject) => {
    const request = https.request(
      url,
      { method: rest.method ?? "GET", headers: rest.headers, ca: ca ?? testApiClientCas() },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () =>
          resolve({ status: response.statusCode ?? 0, headers: response.headers, text: Buffer.concat(chunks).toString() }),
        );
        response.on("error", reject);
      },
    );
    request.on("error", reject);
    request.end(rest.body);
  });
  return {
    status: body.status,
    headers: body.headers,
    text: () => Promise.resolve(body.text),
    json: () => Promise.resolve(JSON.parse(body.text)),
  };
}

/** POST /graphql as a real HTTP client would. */
export async function graphqlRequest<T = Record<string, unknown>>(
  url: string,
  query: string,
  options: { token?: string | null; variables?: Record<string, unknown> } = {},
): Promise<GraphQLResponse<T>> {
  const response = await testFetch(url, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
    },
    body: JSON.stringify({ query, variables: options.variables ?? {} }),
  });
  const body = (await response.json()) as Omit<GraphQLResponse<T>, "status">;
  return { status: response.status, ...body };
}

/** A graphql-ws client (the protocol GraphiQL and tooling use) with the token in connectionParams. */
export function subscriptionClient(url: string, token: string): Client {
  return createClient({
    url: url.replace(/^http/, "ws"),
    webSocketImpl: url.startsWith("https:") ? trustingWebSocket(testApiClientCas()) : WebSocket,
    connectionParams: { authorization: `Bearer ${token}` },
    retryAttempts: 0,
    lazy: true,
  });
}

/**
 * Collects subscription payloads; `next(predicate)` waits for a matching one.
 * Errors are collected too, not dropped: an error sent by the server (a
 * failed authorisation, a resolver that threw, a closed socket) ends the
 * subscription, and a test that then waits for a payload would only see a
 * time-out. `errors` holds them (a payload's GraphQL errors and the
 * subscription's own), each waiting `next` fails at once naming them, and a
 * suite asserts `errors` empty when it is done.
 */
export class SubscriptionRecorder<T> {
  readonly received: T[] = [];
  readonly errors: unknown[] = [];
  private waiters: Array<{ predicate: (value: T) => boolean; resolve: (value: T) => void; reject: (error: Error) => void }> = [];
  readonly dispose: () => void;

  constructor(client: Client, query: string, variables: Record<string, unknown> = {}) {
    this.dispose = client.subscribe<T>(
      { query, variables },
      {
        next: (result) => {
          if (result.errors?.length) this.fail(result.errors);
          if (result.data === undefined || result.data === null) return;
          const value = result.data as T;
          this.received.push(value);
          this.waiters = this.waiters.filter((waiter) => {
            if (!waiter.predicate(value)) return true;
            waiter.resolve(value);
            return false;
          });
        },
        error: (error) => this.fail(error),
        complete: () => undefined,
      },
    );
  }

  next(predicate: (value: T) => boolean, timeoutMs = 30000): Promise<T> {
    const existing = this.received.find(predicate);
    if (existing) return Promise.resolve(existing);
    if (this.errors.length > 0) return Promise.reject(this.failure());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () =>
          reject(new Error(`no matching subscription payload within ${timeoutMs} ms; got ${JSON.stringify(this.received).slice(0, 2000)}`)),
        timeoutMs,
      );
      this.waiters.push({
        predicate,
        resolve: (value) => {
          clearTimeout(timer);
          resolve(value);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
    });
  }

  private fail(error: unknown): void {
    this.errors.push(error);
    const failure = this.failure();
    for (const waiter of this.waiters) waiter.reject(failure);
    this.waiters = [];
  }

  private failure(): Error {
    return new Error(`the subscription failed: ${describeErrors(this.errors)}`);
  }
}

/** What a subscription error says: GraphQL errors, an Error, or the CloseEvent of the socket. */
export function describeErrors(errors: readonly unknown[]): string {
  return errors
    .map((error) => {
      if (error instanceof Error) return error.message;
      if (error && typeof error === "object" && "code" in error && "reason" in error) {
        const closed = error as { code: number; reason: string };
        return `socket closed ${closed.code} ${closed.reason}`;
      }
      return JSON.stringify(error);
    })
    .join("; ");
}

/** A WebSocket class (for graphql-ws) whose wss:// connections verify the server against `ca`. */
export function trustingWebSocket(ca: string[]): typeof WebSocket {
  return class extends WebSocket {
    constructor(address: string | URL, protocols?: string | string[]) {
      super(address, protocols, { ca });
    }
  } as typeof WebSocket;
}
