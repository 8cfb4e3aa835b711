import { Kind, parse, type FragmentDefinitionNode, type OperationDefinitionNode } from "graphql";
import { operationDepth } from "../../src/api/limits";

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
