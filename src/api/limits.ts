import type { ApolloServerPlugin } from "@apollo/server";
import {
  Kind,
  type DocumentNode,
  type FragmentDefinitionNode,
  type OperationDefinitionNode,
  type SelectionSetNode,
  type GraphQLSchema,
} from "graphql";
import { fieldExtensionsEstimator, getComplexity, simpleEstimator } from "graphql-query-complexity";
import { ErrorCode } from "../errors";
import { promiseTry } from "../util/promise-try";
import { codedGraphQLError } from "./errors";

/** Depth of an operation's selections, fragments followed, introspection (`__schema`…) not counted. */
export function operationDepth(operation: OperationDefinitionNode, fragments: Map<string, FragmentDefinitionNode>): number {
  const depthOf = (selectionSet: SelectionSetNode | undefined, seen: Set<string>): number => {
    if (!selectionSet) return 0;
    let deepest = 0;
    for (const selection of selectionSet.selections) {
      if (selection.kind === Kind.FIELD) {
        if (selection.name.value.startsWith("__")) continue;
        deepest = Math.max(deepest, 1 + depthOf(selection.selectionSet, seen));
      } else if (selection.kind === Kind.INLINE_FRAGMENT) {
        deepest = Math.max(deepest, depthOf(selection.selectionSet, seen));
      } else {
        const name = selection.name.value;
        if (seen.has(name)) continue; // cycles are a validation error anyway
        deepest = Math.max(deepest, depthOf(fragments.get(name)?.selectionSet, new Set([...seen, name])));
      }
    }
    return deepest;
  };
  return depthOf(operation.selectionSet, new Set());
}

function isIntrospectionOnly(operation: OperationDefinitionNode): boolean {
  return operation.selectionSet.selections.every((selection) => selection.kind === Kind.FIELD && selection.name.value.startsWith("__"));
}

/**
 * Refuses, before execution, an operation deeper than `maxDepth` or costlier
 * than `maxComplexity` (one per field; list fields with a page size multiply
 * their children by it), so one request cannot exhaust the server.
 */
export function queryLimitsPlugin(schema: GraphQLSchema, limits: { maxDepth: number; maxComplexity: number }): ApolloServerPlugin {
  // Apollo reuses the parsed DocumentNode of a query it has seen, so the
  // verdict for (document, operation, variables) can be remembered: clients
  // repeat the same few queries, and cost analysis walks the whole document.
  const accepted = new WeakMap<DocumentNode, Set<string>>();
  return {
    requestDidStart() {
      return Promise.resolve({
        // A refusal is thrown, and must reach Apollo as a rejection.
        didResolveOperation: ({ document, operation, request }) =>
          promiseTry(() => {
            if (!operation || isIntrospectionOnly(operation)) return;
            const key = `${request.operationName ?? ""}\u0000${JSON.stringify(request.variables ?? {})}`;
            if (accepted.get(document)?.has(key)) return;
            checkLimits(schema, document, operation, request.variables ?? {}, request.operationName, limits);
            let keys = accepted.get(document);
            if (!keys) accepted.set(document, (keys = new Set()));
            if (keys.size < 100) keys.add(key);
          }),
      });
    },
  };
}

export function checkLimits(
  schema: GraphQLSchema,
  document: DocumentNode,
  operation: OperationDefinitionNode,
  variables: Record<string, unknown>,
  operationName: string | undefined | null,
  limits: { maxDepth: number; maxComplexity: number },
): void {
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
  const complexity = getComplexity({
    schema,
    query: document,
    variables,
    operationName: operationName ?? undefined,
    estimators: [fieldExtensionsEstimator(), simpleEstimator({ defaultComplexity: 1 })],
  });
  if (complexity > limits.maxComplexity) {
    throw codedGraphQLError(ErrorCode.QueryTooComplex, `query cost ${complexity} exceeds the limit of ${limits.maxComplexity}`, {
      complexity,
      maxComplexity: limits.maxComplexity,
    });
  }
}
