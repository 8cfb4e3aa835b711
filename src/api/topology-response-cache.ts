import type { ApolloServerPlugin } from "@apollo/server";
import type { IncomingMessage, ServerResponse } from "node:http";
import { Kind, OperationTypeNode } from "graphql";
import type { ClusterSnapshot } from "../cluster/topology";
import type { TopologyReader } from "../cluster/topology-reader";
import type { TokenAccess } from "../secrets/token-access";
import { bearerToken } from "./auth/auth";
import type { ApiContext } from "./context";

/** Root fields whose answer is a pure function of the topology snapshot. */
const SNAPSHOT_FIELDS = new Set(["cluster", "node", "__typename"]);
const MAX_ENTRIES = 256;

interface Entry {
  readonly snapshot: ClusterSnapshot;
  readonly body: Buffer;
}

/**
 * Answers a repeated topology query from the serialised answer to the same
 * query over the same snapshot. The snapshot changes once per poll while
 * dashboards and load balancers ask many times a second; re-running Apollo's
 * pipeline for an answer that cannot have changed is most of a request's
 * CPU. Only successful queries whose root fields all read the snapshot
 * (`cluster`, `node`) are kept, keyed by query text, variables, operation
 * name and the caller's role; an entry serves only while the reader still
 * returns the very snapshot object it was computed from (the reader drops it
 * the moment Redis reports a change). The token is still verified on every
 * request; anything else goes through Apollo as usual.
 */
export class TopologyResponseCache {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly topology: TopologyReader,
    private readonly tokens: TokenAccess,
  ) {}

  /**
   * Answers from the cache when it can, before Express and Apollo (which
   * allocate more per request than this whole path); returns false to let
   * them answer. `body` is the request's parsed JSON body.
   */
  async serve(req: IncomingMessage, res: ServerResponse, body: unknown): Promise<boolean> {
    try {
      const key = this.keyFor(req, body);
      const entry = key === null ? undefined : this.entries.get(key);
      if (!entry || (await this.topology.read()) !== entry.snapshot) return false;
      res.writeHead(200, { "content-type": "application/json; charset=utf-8", "content-length": entry.body.length });
      res.end(entry.body);
      return true;
    } catch {
      return false; // Apollo answers, with the proper error if there is one
    }
  }

  /** Apollo plugin that fills the cache from answers Apollo produced. */
  plugin(): ApolloServerPlugin<ApiContext> {
    return {
      requestDidStart: async ({ request, contextValue }) => {
        const before = await this.topology.read().catch(() => null);
        return {
          willSendResponse: async ({ operation, response, errors }) => {
            if (!before || operation?.operation !== OperationTypeNode.QUERY || (errors?.length ?? 0) > 0) return;
            if (response.body.kind !== "single" || response.body.singleResult.errors) return;
            if (response.http.status !== undefined && response.http.status !== 200) return;
            const readsOnlySnapshot = operation.selectionSet.selections.every(
              (selection) => selection.kind === Kind.FIELD && SNAPSHOT_FIELDS.has(selection.name.value),
            );
            if (!readsOnlySnapshot || typeof request.query !== "string") return;
            if ((await this.topology.read().catch(() => null)) !== before) return; // changed meanwhile
            if (this.entries.size >= MAX_ENTRIES) this.entries.clear();
            const key = cacheKey(request.query, request.variables ?? null, request.operationName ?? null, contextValue.identity.role);
            // The same bytes Apollo sends: JSON plus a newline.
            this.entries.set(key, { snapshot: before, body: Buffer.from(`${JSON.stringify(response.body.singleResult)}\n`) });
          },
        };
      },
    };
  }

  private keyFor(req: IncomingMessage, parsed: unknown): string | null {
    const body = parsed as { query?: unknown; variables?: unknown; operationName?: unknown } | null;
    if (!body || typeof body.query !== "string") return null;
    const token = bearerToken(req.headers.authorization);
    const check = token === null ? null : this.tokens.check(token);
    if (check?.phase !== "accepted") return null; // Apollo refuses it, with the reason
    return cacheKey(
      body.query,
      body.variables ?? null,
      typeof body.operationName === "string" ? body.operationName : null,
      check.identity.role,
    );
  }
}

function cacheKey(query: string, variables: unknown, operationName: string | null, role: string): string {
  return JSON.stringify([role, operationName, query, variables]);
}
