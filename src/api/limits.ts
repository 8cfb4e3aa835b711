import type { ApolloServerPlugin, BaseContext } from "@apollo/server";
import {
  GraphQLError,
  Kind,
  OperationTypeNode,
  getOperationAST,
  parse,
  validate,
  type DocumentNode,
  type FragmentDefinitionNode,
  type OperationDefinitionNode,
  type SelectionSetNode,
  type GraphQLSchema,
} from "graphql";
import { fieldExtensionsEstimator, getComplexity, simpleEstimator, type ComplexityEstimatorArgs } from "graphql-query-complexity";
import { ErrorCode } from "../errors";
import { codedGraphQLError } from "./errors";

/**
 * The API's admission rules, one module for every way in (POST /graphql
 * through Apollo's plugin, the WebSocket through `admitOperation`): how big a
 * request may be, how deep and costly an operation, and what each field
 * costs. The per-client rate limit is rate-limit.ts.
 */

/** Largest HTTP request body and largest WebSocket message (a bigger frame closes the socket, before or after connection_init). */
export const MAX_REQUEST_BYTES = 256 * 1024;

/**
 * Lexical tokens a GraphQL document may have (graphql's `maxTokens`): the
 * parser stops there, so validation (quadratic in aliases of one field in
 * the worst case) never sees more. A 2000-alias document has about 12 000;
 * GraphiQL's introspection query under 1000.
 */
export const MAX_DOCUMENT_TOKENS = 15_000;

/** The parse options of every path: Apollo's, the WebSocket's, the early mutation refusal's. */
export const PARSE_OPTIONS = { maxTokens: MAX_DOCUMENT_TOKENS } as const;

export interface OperationLimits {
  readonly maxDepth: number;
  readonly maxComplexity: number;
}

/**
 * Fixed costs of the fields whose work does not show in their page size:
 * a request of many aliases of a cheap-looking field must not run that work
 * once per alias (issue 14: 1200 aliases of a filtered `events` kept the
 * event loop the failover monitor shares busy for 13.8 s). The resolvers also
 * share that work inside one request (request-memo.ts); these costs bound
 * what distinct arguments can still make them repeat.
 */
export const FIELD_COSTS = {
  /** `backups`: reads and parses every manifest of the repository. */
  backupCatalog: 25,
  /** `backup(id)`: its manifest, its chain's manifests, its progress in Redis. */
  oneBackup: 10,
  /** `recoveryWindow`: every manifest, and a stat of every archived WAL segment. */
  recoveryWindow: 50,
  /** An event-stream scan with a filter (`events(kinds:|node:)`, `failovers`): up to 50 000 entries read and decoded. */
  eventScan: 50,
} as const;

/**
 * A list field's page size as the cost estimator must count it: the
 * argument clamped to what the field accepts, so that an out-of-range value
 * (refused later by the field's own validation) can neither inflate nor,
 * negative, cancel the cost of the operation's other fields.
 */
export function countedPageSize(value: unknown, bounds: { readonly defaultSize: number; readonly maxSize: number }): number {
  const size = typeof value === "number" && Number.isFinite(value) ? Math.trunc(value) : bounds.defaultSize;
  return Math.min(Math.max(size, 1), bounds.maxSize);
}

/**
 * The `complexity` of a paged field: one, plus its fixed cost, plus its
 * selection once per item of the page.
 */
export function pagedFieldCost(options: {
  readonly sizeArgument: string;
  readonly defaultSize: number;
  readonly maxSize: number;
  readonly fixed?: (args: Record<string, unknown>) => number;
}): (estimate: ComplexityEstimatorArgs) => number {
  return ({ args, childComplexity }) =>
    1 + (options.fixed?.(args) ?? 0) + childComplexity * countedPageSize(args[options.sizeArgument], options);
}

/** Whether an event query filters the stream (and so may scan far past its page). */
export function filtersEventStream(args: Record<string, unknown>): boolean {
  return (Array.isArray(args.kinds) && args.kinds.length > 0) || (typeof args.node === "string" && args.node !== "");
}

/**
 * Depth of an operation's selections, fragments followed, introspection
 * (`__schema`…) not counted: GraphiQL's schema query is deeper than any data
 * query. Its nesting is bounded by graphql-js's introspection depth rule, and
 * its work by the cost limit (INTROSPECTION_COST).
 *
 * Each fragment's depth is computed once (review 13: without that, a
 * 1.2 KB document of fragments spreading the next one twice, 22 deep, cost
 * 2^22 visits and froze the event loop for 7 s), so the walk is linear in
 * the document's size.
 */
export function operationDepth(operation: OperationDefinitionNode, fragments: Map<string, FragmentDefinitionNode>): number {
  const fragmentDepths = new Map<string, number>();
  const walking = new Set<string>();
  const fragmentDepth = (name: string): number => {
    const known = fragmentDepths.get(name);
    if (known !== undefined) return known;
    if (walking.has(name)) return 0; // a cycle: a validation error anyway
    walking.add(name);
    const depth = depthOf(fragments.get(name)?.selectionSet);
    walking.delete(name);
    fragmentDepths.set(name, depth);
    return depth;
  };
  const depthOf = (selectionSet: SelectionSetNode | undefined): number => {
    if (!selectionSet) return 0;
    let deepest = 0;
    for (const selection of selectionSet.selections) {
      if (selection.kind === Kind.FIELD) {
        if (selection.name.value.startsWith("__")) continue;
        deepest = Math.max(deepest, 1 + depthOf(selection.selectionSet));
      } else if (selection.kind === Kind.INLINE_FRAGMENT) {
        deepest = Math.max(deepest, depthOf(selection.selectionSet));
      } else {
        deepest = Math.max(deepest, fragmentDepth(selection.name.value));
      }
    }
    return deepest;
  };
  return depthOf(operation.selectionSet);
}

/**
 * What an introspection field that walks the schema costs on top of its
 * selection, counted like any other field's: the root fields `__schema` and
 * `__type`, and `__schema`'s `types` (every type, aliases of it inside one
 * `__schema` walk it again each). Introspection is not exempt from the cost
 * limit (review 12: 1100 aliases of a deep `__schema`, 250 KiB, kept the
 * event loop busy some 6 s and made a 66 MB answer; graphql-js's own
 * introspection depth rule does not count aliases). This lets a few walks
 * run in one request (GraphiQL's query, which has one, costs some 630, well
 * under the default limit) and not hundreds.
 */
export const INTROSPECTION_COST = 200;

function introspectionEstimator({ type, field, childComplexity }: ComplexityEstimatorArgs): number | void {
  const walksSchema = field.name === "__schema" || field.name === "__type" || (type.name === "__Schema" && field.name === "types");
  if (walksSchema) return 1 + INTROSPECTION_COST + childComplexity;
}

/**
 * Refuses, before execution, an operation deeper than `maxDepth` or costlier
 * than `maxComplexity` (one per field; list fields with a page size multiply
 * their children by it), so one request cannot exhaust the server.
 */
export function queryLimitsPlugin<TContext extends BaseContext>(
  schema: GraphQLSchema,
  limits: OperationLimits,
  options: {
    /** Runs with the cost of each admitted operation (the rate limit's rest of it); a rejection refuses the operation. */
    readonly onAdmitted?: (admitted: {
      readonly cost: number;
      readonly operation: OperationDefinitionNode;
      readonly contextValue: TContext;
    }) => Promise<void>;
  } = {},
): ApolloServerPlugin<TContext> {
  // Apollo reuses the parsed DocumentNode of a query it has seen, so the
  // verdict for (document, operation, variables) can be remembered, with its
  // cost: clients repeat the same few queries, and cost analysis walks the
  // whole document.
  const accepted = new WeakMap<DocumentNode, Map<string, number>>();
  return {
    requestDidStart() {
      return Promise.resolve({
        // A refusal is thrown, and reaches Apollo as a rejection (an async function).
        didResolveOperation: async ({ document, operation, request, contextValue }) => {
          if (!operation) return;
          const key = `${request.operationName ?? ""}\u0000${JSON.stringify(request.variables ?? {})}`;
          let cost = accepted.get(document)?.get(key);
          if (cost === undefined) {
            cost = checkLimits(schema, document, operation, request.variables ?? {}, request.operationName, limits);
            let costs = accepted.get(document);
            if (!costs) accepted.set(document, (costs = new Map<string, number>()));
            if (costs.size < 100) costs.set(key, cost);
          }
          await options.onAdmitted?.({ cost, operation, contextValue });
        },
      });
    },
  };
}

/** Fields (fragments expanded) the cost estimate visits before it refuses the operation outright. */
const MAX_COUNTED_FIELDS = 10000;
/** graphql-query-complexity's message when it visited more than maxQueryNodes. */
const QUERY_NODES_EXCEEDED = "Query exceeds the maximum allowed number of nodes.";

export function checkLimits(
  schema: GraphQLSchema,
  document: DocumentNode,
  operation: OperationDefinitionNode,
  variables: Record<string, unknown>,
  operationName: string | undefined | null,
  limits: OperationLimits,
): number {
  const fragments = new Map(
    document.definitions.filter((d): d is FragmentDefinitionNode => d.kind === Kind.FRAGMENT_DEFINITION).map((d) => [d.name.value, d]),
  );
  const depth = operationDepth(operation, fragments);
  if (depth > limits.maxDepth) {
    throw codedGraphQLError(ErrorCode.QueryTooDeep, `query depth ${depth} exceeds the limit of ${limits.maxDepth}`, {
      depth,
      maxDepth: limits.maxDepth,
    });
  }
  let complexity: number;
  try {
    complexity = getComplexity({
      schema,
      query: document,
      variables,
      operationName: operationName ?? undefined,
      maxQueryNodes: MAX_COUNTED_FIELDS,
      estimators: [introspectionEstimator, fieldExtensionsEstimator(), simpleEstimator({ defaultComplexity: 1 })],
    });
  } catch (error) {
    // graphql-query-complexity stops counting there, with an error of no code: it is a refusal by cost like the others.
    if (!(error instanceof GraphQLError) || error.message !== QUERY_NODES_EXCEEDED) throw error;
    throw codedGraphQLError(ErrorCode.QueryTooComplex, `query has more than ${MAX_COUNTED_FIELDS} fields to count; ask for fewer`, {
      maxComplexity: limits.maxComplexity,
    });
  }
  if (complexity > limits.maxComplexity) {
    throw codedGraphQLError(ErrorCode.QueryTooComplex, `query cost ${complexity} exceeds the limit of ${limits.maxComplexity}`, {
      complexity,
      maxComplexity: limits.maxComplexity,
    });
  }
  return complexity;
}

export type Admission =
  | {
      readonly phase: "admitted";
      readonly document: DocumentNode;
      readonly operation: OperationDefinitionNode;
      /** Its estimated cost (the rate limit charges by it). */
      readonly cost: number;
    }
  | { readonly phase: "refused"; readonly errors: readonly GraphQLError[] };

/**
 * What Apollo does for POST /graphql before executing, for a path that has
 * no Apollo (the WebSocket): parse, validate against the schema, pick the
 * operation, and apply the same depth and cost limits, refusing with the
 * same codes (GraphQL's GRAPHQL_PARSE_FAILED / GRAPHQL_VALIDATION_FAILED,
 * then QUERY_TOO_DEEP / QUERY_TOO_COMPLEX).
 */
export function admitOperation(
  schema: GraphQLSchema,
  request: { readonly query: string; readonly operationName?: string | null; readonly variables?: Record<string, unknown> | null },
  limits: OperationLimits,
): Admission {
  let document: DocumentNode;
  try {
    document = parse(request.query, PARSE_OPTIONS);
  } catch (error) {
    const syntax = error instanceof GraphQLError ? error : new GraphQLError(String(error));
    return refused([
      new GraphQLError(syntax.message, {
        source: syntax.source,
        positions: syntax.positions,
        extensions: { code: "GRAPHQL_PARSE_FAILED" },
      }),
    ]);
  }
  const invalid = validate(schema, document);
  if (invalid.length > 0) {
    return refused(
      invalid.map((error) => new GraphQLError(error.message, { nodes: error.nodes, extensions: { code: "GRAPHQL_VALIDATION_FAILED" } })),
    );
  }
  const operation = getOperationAST(document, request.operationName);
  if (!operation) {
    return refused([
      codedGraphQLError(
        ErrorCode.BadUserInput,
        request.operationName
          ? `no operation named ${request.operationName} in the document`
          : "the document has several operations: name one",
      ),
    ]);
  }
  let cost: number;
  try {
    cost = checkLimits(schema, document, operation, request.variables ?? {}, request.operationName, limits);
  } catch (error) {
    if (error instanceof GraphQLError) return refused([error]);
    throw error;
  }
  return { phase: "admitted", document, operation, cost };
}

function refused(errors: readonly GraphQLError[]): Admission {
  return { phase: "refused", errors };
}

/** Whether an admitted operation changes something (a mutation). */
export function isMutation(operation: OperationDefinitionNode): boolean {
  return operation.operation === OperationTypeNode.MUTATION;
}
