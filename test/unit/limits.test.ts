import "reflect-metadata";
import { createPubSub } from "@graphql-yoga/subscription";
import {
  Kind,
  getIntrospectionQuery,
  getOperationAST,
  parse,
  type FragmentDefinitionNode,
  type GraphQLError,
  type GraphQLSchema,
  type OperationDefinitionNode,
} from "graphql";
import {
  MAX_DOCUMENT_TOKENS,
  MAX_REQUEST_BYTES,
  admitOperation,
  countedPageSize,
  isMutation,
  operationDepth,
  queryLimitsPlugin,
} from "../../src/api/limits";
import { isJsonContentType, targetsGraphqlPath } from "../../src/api/graphql-route";
import { buildRelevoSchema } from "../../src/api/schema";
import { configKeys } from "../../src/config/config-keys";

function depth(query: string): number {
  const document = parse(query);
  const operation = document.definitions.find((d): d is OperationDefinitionNode => d.kind === Kind.OPERATION_DEFINITION)!;
  const fragments = new Map(
    document.definitions.filter((d): d is FragmentDefinitionNode => d.kind === Kind.FRAGMENT_DEFINITION).map((d) => [d.name.value, d]),
  );
  return operationDepth(operation, fragments);
}

describe("query depth", () => {
  test("counts nested fields, through fragments and inline fragments", () => {
    expect(depth("{ a }")).toBe(1);
    expect(depth("{ a { b { c } } d }")).toBe(3);
    expect(depth("{ a { ...F } } fragment F on T { b { c { d } } }")).toBe(4);
    expect(depth("{ a { ... on T { b { c } } } }")).toBe(3);
  });

  test("introspection fields do not count; fragment cycles do not loop", () => {
    expect(depth("{ __schema { types { fields { type { ofType { name } } } } } a }")).toBe(1);
    expect(depth("{ a { ...F } } fragment F on T { b { ...F } }")).toBe(2);
  });
});

describe("admission: one set of rules for HTTP and the WebSocket", () => {
  // The defaults a service runs with (RELEVO_API_MAX_DEPTH, RELEVO_API_MAX_COMPLEXITY).
  const limits = { maxDepth: Number(configKeys.apiMaxDepth.default), maxComplexity: Number(configKeys.apiMaxComplexity.default) };
  let schema: GraphQLSchema;
  beforeAll(async () => {
    schema = await buildRelevoSchema({ pubSub: createPubSub() });
  });

  const aliases = (count: number, field: string): string => `{ ${Array.from({ length: count }, (_, i) => `a${i}: ${field}`).join(" ")} }`;
  const refusal = (query: string, variables: Record<string, unknown> = {}): unknown => {
    const admission = admitOperation(schema, { query, variables }, limits);
    return admission.phase === "refused" ? admission.errors.map((error) => error.extensions.code) : "admitted";
  };

  test("1000 aliases of a field that reads the catalog or scans the stream are refused; 600 by their cost, before any work", () => {
    // Issue 14: 1200 aliases of `events(first: 1, kinds: …)` were under the limit and kept the event loop busy 13.8 s.
    for (const field of [
      "backups(first: 1) { totalCount }",
      `events(first: 1, kinds: ["archive:gap"]) { edges { cursor } }`,
      `events(first: 1, node: "node1") { edges { cursor } }`,
      "failovers(limit: 1) { id }",
      "recoveryWindow { gaps { __typename } }",
      `backup(id: "20261125T224500Z-F") { id }`,
    ]) {
      // 1000 of the longer ones are past the document's token bound already (refused by the parser, which stops there).
      expect([field, refusal(aliases(1000, field))]).toEqual([
        field,
        expect.arrayContaining([expect.stringMatching(/^(QUERY_TOO_COMPLEX|GRAPHQL_PARSE_FAILED)$/)]),
      ]);
      expect([field, refusal(aliases(600, field))]).toEqual([field, ["QUERY_TOO_COMPLEX"]]);
      expect([field, refusal(aliases(1, field))]).toEqual([field, "admitted"]);
    }
    // What reads only a page is charged by its page: many small unfiltered pages stay allowed.
    expect(refusal(aliases(100, "events(first: 1) { edges { cursor } }"))).toBe("admitted");
  });

  test("introspection is not exempt from cost: 250 aliases of a deep `__schema` are refused on both paths; GraphiQL's is not", async () => {
    // Review 12: 250 KiB of these ran 5 s and answered 66 MB; graphql-js's introspection depth rule does not count aliases.
    const deep =
      "__schema { types { name kind description fields(includeDeprecated: true) { name description " +
      "args { name type { name } } type { name kind ofType { name kind ofType { name } } } } } }";
    const overHttp = async (query: string): Promise<unknown> => {
      const document = parse(query);
      const operation = getOperationAST(document)!;
      const listener = await queryLimitsPlugin(schema, limits).requestDidStart!({} as never);
      try {
        await listener!.didResolveOperation!({ document, operation, request: { query, variables: {} } } as never);
        return "admitted";
      } catch (error) {
        return [(error as GraphQLError).extensions.code];
      }
    };
    // 250 (1100 in review 12's request) keeps the document under MAX_DOCUMENT_TOKENS, so the cost is what refuses it.
    const flood = aliases(250, deep);
    expect(flood.length).toBeLessThan(MAX_REQUEST_BYTES);
    expect(refusal(flood)).toEqual(["QUERY_TOO_COMPLEX"]);
    expect(await overHttp(flood)).toEqual(["QUERY_TOO_COMPLEX"]);
    // Under the estimator's field count too, by their fixed cost: 30 schema walks, 1100 of one type, or 30 walks
    // aliased inside one `__schema`.
    const walk = "types { name fields { name args { name } type { name ofType { name } } } }";
    const inside = `{ __schema { ${Array.from({ length: 30 }, (_, i) => `a${i}: ${walk}`).join(" ")} } }`;
    for (const query of [aliases(30, deep), aliases(1100, `__type(name: "Query") { name }`), inside]) {
      expect(refusal(query)).toEqual(["QUERY_TOO_COMPLEX"]);
      expect(await overHttp(query)).toEqual(["QUERY_TOO_COMPLEX"]);
    }
    // GraphiQL asks for the schema with getIntrospectionQuery (with these options on, in its newer versions).
    for (const query of [
      getIntrospectionQuery(),
      getIntrospectionQuery({ inputValueDeprecation: true, schemaDescription: true, specifiedByUrl: true, directiveIsRepeatable: true }),
      `{ ${deep} }`,
    ]) {
      expect(refusal(query)).toBe("admitted");
      expect(await overHttp(query)).toBe("admitted");
    }
  });

  test("a document of more than MAX_DOCUMENT_TOKENS tokens is refused by the parser, which stops there", () => {
    // `{ a0: __typename … __typename }`: three tokens an alias, one for each brace and the last field. (Distinct
    // aliases: graphql's own overlapping-fields budget aborts validation of many fields of one name.)
    const aliased = Array.from({ length: (MAX_DOCUMENT_TOKENS - 3) / 3 }, (_, i) => `a${i}: __typename`).join(" ");
    const within = `{ ${aliased} __typename }`;
    const past = `{ ${aliased} __typename __typename }`;
    expect(within.length).toBeLessThan(MAX_REQUEST_BYTES);
    expect(refusal(within)).toBe("admitted");
    const refused = admitOperation(schema, { query: past }, limits);
    expect(refused.phase === "refused" && refused.errors.map((error) => [error.extensions.code, error.message])).toEqual([
      ["GRAPHQL_PARSE_FAILED", expect.stringContaining(`${MAX_DOCUMENT_TOKENS} tokens`)],
    ]);
  });

  test("an out-of-range page size counts as the largest allowed: a negative one cannot cancel the cost of other fields", () => {
    const expensive = aliases(190, "backups(first: 1) { totalCount }").slice(1, -1);
    expect(refusal(`{ ${expensive} }`)).toEqual(["QUERY_TOO_COMPLEX"]);
    for (const size of [-1000000, -1, 0]) {
      expect(refusal(`{ cancel: events(first: ${size}) { edges { node { id kind message } } } ${expensive} }`)).toEqual([
        "QUERY_TOO_COMPLEX",
      ]);
      expect(refusal(`query($n: Int!) { cancel: backups(first: $n) { edges { cursor } } ${expensive} }`, { n: size })).toEqual([
        "QUERY_TOO_COMPLEX",
      ]);
    }
    expect(countedPageSize(1e9, { defaultSize: 20, maxSize: 200 })).toBe(200);
    expect(countedPageSize(undefined, { defaultSize: 20, maxSize: 200 })).toBe(20);
  });

  test("parse, validation, depth and operation choice give the codes Apollo gives over HTTP", () => {
    expect(refusal("{ cluster { name ")).toEqual(["GRAPHQL_PARSE_FAILED"]);
    expect(refusal("{ cluster { noSuchField } }")).toEqual(["GRAPHQL_VALIDATION_FAILED"]);
    expect(refusal("{ events(first: 1) { edges { node { actor { id } } } } }")).toEqual("admitted");
    expect(
      admitOperation(schema, { query: "{ events(first: 1) { edges { node { actor { id } } } } }" }, { ...limits, maxDepth: 4 }),
    ).toMatchObject({
      phase: "refused",
      errors: [{ extensions: { code: "QUERY_TOO_DEEP", depth: 5, maxDepth: 4 } }],
    });
    expect(refusal("query A { cluster { name } } query B { cluster { name } }")).toEqual(["BAD_USER_INPUT"]);
    const admitted = admitOperation(schema, { query: "mutation M { refreshTopology { name } }" }, limits);
    expect(admitted.phase === "admitted" && isMutation(admitted.operation)).toBe(true);
  });
});

describe("the one GraphQL path, matched exactly", () => {
  test("GRAPHQL_PATH with any query string; no other spelling (Express would route those to a mount path)", () => {
    expect(targetsGraphqlPath("/graphql")).toBe(true);
    expect(targetsGraphqlPath("/graphql?x")).toBe(true);
    expect(targetsGraphqlPath("/graphql?query=%7B%20cluster%20%7B%20name%20%7D%20%7D")).toBe(true);
    for (const target of ["/GRAPHQL", "/GraphQL", "/graphql/", "/graphql/x", "/graphqlx", "/%67raphql", "//graphql", "/health"]) {
      expect([target, targetsGraphqlPath(target)]).toEqual([target, false]);
    }
  });

  test("any request target a client may send is read without throwing", () => {
    // `new URL` throws on each of these; an exception there would be an unhandled rejection in the request handler.
    for (const target of ["//", "//:", "//[::1/graphql", "http://[", "/graphql?%%%", "*", "", undefined]) {
      expect(() => targetsGraphqlPath(target)).not.toThrow();
    }
    expect(targetsGraphqlPath("/graphql?%%%&query=x")).toBe(true);
  });

  test("a JSON body is recognised as body-parser recognises it: any case, parameters ignored", () => {
    for (const header of ["application/json", "Application/JSON", "application/json; charset=utf-8", " APPLICATION/JSON ;charset=UTF-8"]) {
      expect([header, isJsonContentType(header)]).toEqual([header, true]);
    }
    for (const header of ["text/plain", "application/jsonx", "application/graphql", "", undefined]) {
      expect([header, isJsonContentType(header)]).toEqual([header, false]);
    }
  });
});
