import type { ClusterSnapshot, NodeSnapshot } from "../../cluster/topology";
import type { Cluster, Node } from "./cluster.type";

/** Domain snapshot → GraphQL objects. Enum values are the domain's own strings. */
export function toNode(node: NodeSnapshot): Node {
  return node as unknown as Node;
}

export function toCluster(snapshot: ClusterSnapshot): Cluster {
  const nodes = snapshot.nodes.map(toNode);
  return {
    name: snapshot.name,
    primary: nodes.find((node) => node.name === snapshot.primary) ?? null,
    replicas: nodes.filter((node) => node.name !== snapshot.primary && node.role === "replica"),
    nodes,
    health: snapshot.health,
    healthReasons: [...snapshot.healthReasons],
    collectedAt: snapshot.collectedAt,
  } as Cluster;
}
