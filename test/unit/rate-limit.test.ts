import { runsGraphqlOperation } from "../../src/api/rate-limit";

describe("which HTTP requests the rate limit counts", () => {
  test("GraphQL operations: POST /graphql, and GET /graphql with a query", () => {
    expect(runsGraphqlOperation("POST", "/graphql")).toBe(true);
    expect(runsGraphqlOperation("POST", "/graphql?x=1")).toBe(true);
    expect(runsGraphqlOperation("GET", "/graphql?query=%7B%20cluster%20%7B%20name%20%7D%20%7D")).toBe(true);
  });

  test("not the GraphiQL page, the health routes or other paths", () => {
    expect(runsGraphqlOperation("GET", "/graphql")).toBe(false);
    expect(runsGraphqlOperation("GET", "/health")).toBe(false);
    expect(runsGraphqlOperation("GET", "/nodes/node1/primary")).toBe(false);
    expect(runsGraphqlOperation("POST", "/graphqlx")).toBe(false);
  });

  test("any request target a client may send is read without throwing", () => {
    // `new URL` throws on each of these; an exception there would be an unhandled rejection in the request handler.
    for (const target of ["//", "//:", "//[::1/graphql", "http://[", "/graphql?%%%", "*", "", undefined]) {
      expect(() => runsGraphqlOperation("GET", target)).not.toThrow();
    }
    expect(runsGraphqlOperation("GET", "/graphql?%%%&query=x")).toBe(true);
  });
});
