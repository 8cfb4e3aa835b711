import { graphqlRequest, subscriptionClient } from "../helpers/graphql-client";
import { eventually, useTestCluster } from "../helpers/service";
import { mintToken } from "../../src/secrets/tokens";
import { sqlOn } from "../helpers/sql";

describe("API auth, errors and limits", () => {
  const cluster = useTestCluster("auth", { apiMaxDepth: 4, apiMaxComplexity: 400 });

  test("no token: UNAUTHENTICATED with HTTP 401, for queries and introspection alike", async () => {
    for (const query of ["{ cluster { name } }", "{ __schema { queryType { name } } }"]) {
      const response = await graphqlRequest(cluster.url, query);
      expect(response.status).toBe(401);
      expect(response.errors?.[0]?.extensions?.code).toBe("UNAUTHENTICATED");
      expect(response.data ?? null).toBeNull();
    }
  });

  test("an answer cached for a token is never served without one (or with a bad one)", async () => {
    const query = "{ cluster { name primary { name } } }";
    for (let i = 0; i < 3; i += 1) {
      expect((await graphqlRequest(cluster.url, query, { token: cluster.token("viewer") })).data).toEqual({
        cluster: { name: "test", primary: { name: "node1" } },
      });
    }
    for (const token of [null, "rlv.viewer.000000000000.forged"]) {
      const response = await graphqlRequest(cluster.url, query, { token });
      expect(response.status).toBe(401);
      expect(response.errors?.[0]?.extensions?.code).toBe("UNAUTHENTICATED");
    }
  });

  test("a body that is not JSON is a 400 with BAD_USER_INPUT", async () => {
    const response = await fetch(cluster.url, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${cluster.token("viewer")}` },
      body: "{ not json",
    });
    expect(response.status).toBe(400);
    expect(((await response.json()) as { errors: Array<{ extensions: { code: string } }> }).errors[0]!.extensions.code).toBe(
      "BAD_USER_INPUT",
    );
  });

  test("a token signed with another key, or tampered with, is UNAUTHENTICATED", async () => {
    const foreign = mintToken("another-data-home-key-0123456789abcdef", "operator");
    const tampered = cluster.token("viewer").replace("viewer", "operator");
    for (const token of [foreign, tampered, "garbage"]) {
      const response = await graphqlRequest(cluster.url, "{ cluster { name } }", { token });
      expect(response.errors?.[0]?.extensions?.code).toBe("UNAUTHENTICATED");
    }
  });

  test("a viewer token on a mutation: FORBIDDEN; an operator token runs it", async () => {
    const denied = await graphqlRequest(cluster.url, "mutation { refreshTopology { name } }", { token: cluster.token("viewer") });
    expect(denied.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    expect(denied.data).toBeNull();
    const allowed = await graphqlRequest(cluster.url, "mutation { refreshTopology { name health } }", { token: cluster.token("operator") });
    expect(allowed.errors).toBeUndefined();
    expect(allowed.data).toEqual({ refreshTopology: { name: "test", health: "HEALTHY" } });
  });

  test("every mutation is recorded as an event with the token's id and role, consolidated into PostgreSQL", async () => {
    const token = cluster.token("operator");
    const tokenId = token.split(".")[2]!;
    await graphqlRequest(cluster.url, "mutation Audited { refreshTopology { name } }", { token });
    const viewerToken = cluster.token("viewer");
    await graphqlRequest(cluster.url, "mutation Denied { refreshTopology { name } }", { token: viewerToken });
    const rows = await eventually(async () => {
      const found = await sqlOn<{ actor_id: string; actor_role: string; data: unknown; message: string }>(
        cluster.service.nodes[0]!,
        cluster.service.secrets,
        "SELECT actor_id, actor_role, data, message FROM events WHERE kind = 'api:mutation' AND actor_id = ANY($1) ORDER BY occurred_at",
        [[tokenId, viewerToken.split(".")[2]]],
        "relevo",
      );
      return found.length === 2 ? found : undefined;
    });
    expect(rows[0]).toMatchObject({
      actor_id: tokenId,
      actor_role: "operator",
      data: { fields: ["refreshTopology"], operation: "Audited" },
    });
    expect(rows[0]!.message).not.toContain(token); // the id, never the token
    expect(rows[1]).toMatchObject({ actor_role: "viewer", data: { operation: "Denied" } });
    expect(rows[1]!.message).toContain("FORBIDDEN");
  });

  test("unknown node: NOT_FOUND naming the nodes that exist", async () => {
    const response = await graphqlRequest(cluster.url, `{ node(name: "node9") { name } }`, { token: cluster.token("viewer") });
    expect(response.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
    expect(response.errors?.[0]?.message).toContain("node1, node2");
  });

  test("an over-deep query is refused before execution: QUERY_TOO_DEEP names the depth and the limit", async () => {
    // The suite runs with a depth limit of 4. cluster > primary > replication > state is 4 deep;
    // events > edges > node > actor > id is 5, also when the last level comes through a fragment.
    const atLimit = await graphqlRequest(cluster.url, `{ cluster { primary { replication { state } } } }`, {
      token: cluster.token("viewer"),
    });
    expect(atLimit.errors).toBeUndefined();
    for (const query of [
      `{ events(first: 1) { edges { node { actor { id } } } } }`,
      `query { events(first: 1) { edges { node { ...Who } } } } fragment Who on ClusterEvent { actor { id } }`,
    ]) {
      const response = await graphqlRequest(cluster.url, query, { token: cluster.token("viewer") });
      expect(response.errors?.[0]?.extensions).toMatchObject({ code: "QUERY_TOO_DEEP", depth: 5, maxDepth: 4 });
      expect(response.data ?? null).toBeNull();
    }
    // Introspection is exempt (GraphiQL's own schema query is deeper than any data query).
    const introspection = await graphqlRequest(cluster.url, `{ __schema { types { fields { type { ofType { ofType { name } } } } } } }`, {
      token: cluster.token("viewer"),
    });
    expect(introspection.errors).toBeUndefined();
  });

  test("a query whose estimated cost is too high is refused: QUERY_TOO_COMPLEX", async () => {
    const response = await graphqlRequest(cluster.url, `{ events(first: 500) { edges { node { id kind message } } } }`, {
      token: cluster.token("viewer"),
    });
    expect(response.errors?.[0]?.extensions).toMatchObject({ code: "QUERY_TOO_COMPLEX", maxComplexity: 400 });
    const small = await graphqlRequest(cluster.url, `{ events(first: 20) { edges { node { id kind message } } } }`, {
      token: cluster.token("viewer"),
    });
    expect(small.errors).toBeUndefined();
  });

  test("invalid arguments are BAD_USER_INPUT", async () => {
    const response = await graphqlRequest(cluster.url, `{ events(first: 5, kinds: ["no:such-kind"]) { edges { cursor } } }`, {
      token: cluster.token("viewer"),
    });
    expect(response.errors?.[0]?.extensions?.code).toBe("BAD_USER_INPUT");
  });

  test("a WebSocket without a valid token is refused", async () => {
    const client = subscriptionClient(cluster.url, "not-a-token");
    const outcome = await new Promise<string>((resolve) => {
      client.subscribe(
        { query: "subscription { topologyChanged { name } }" },
        {
          next: () => resolve("data"),
          error: (e) => resolve(String((e as { code?: number }).code ?? e)),
          complete: () => resolve("complete"),
        },
      );
    });
    await client.dispose();
    expect(outcome).toBe("4403");
  });
});
