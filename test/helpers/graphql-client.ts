import { createClient, type Client } from "graphql-ws";
import WebSocket from "ws";

export interface GraphQLResponse<T = Record<string, unknown>> {
  status: number;
  data?: T | null;
  errors?: Array<{ message: string; extensions?: { code?: string } & Record<string, unknown>; path?: string[] }>;
}

/** POST /graphql as a real HTTP client would. */
export async function graphqlRequest<T = Record<string, unknown>>(
  url: string,
  query: string,
  options: { token?: string | null; variables?: Record<string, unknown> } = {},
): Promise<GraphQLResponse<T>> {
  const response = await fetch(url, {
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
    webSocketImpl: WebSocket,
    connectionParams: { authorization: `Bearer ${token}` },
    retryAttempts: 0,
    lazy: true,
  });
}

/** Collects subscription payloads; `next(predicate)` waits for a matching one. */
export class SubscriptionRecorder<T> {
  readonly received: T[] = [];
  private waiters: Array<{ predicate: (value: T) => boolean; resolve: (value: T) => void }> = [];
  readonly dispose: () => void;

  constructor(client: Client, query: string, variables: Record<string, unknown> = {}) {
    this.dispose = client.subscribe<T>(
      { query, variables },
      {
        next: (result) => {
          const value = result.data as T;
          this.received.push(value);
          this.waiters = this.waiters.filter((waiter) => {
            if (!waiter.predicate(value)) return true;
            waiter.resolve(value);
            return false;
          });
        },
        error: () => undefined,
        complete: () => undefined,
      },
    );
  }

  next(predicate: (value: T) => boolean, timeoutMs = 30000): Promise<T> {
    const existing = this.received.find(predicate);
    if (existing) return Promise.resolve(existing);
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
      });
    });
  }
}
