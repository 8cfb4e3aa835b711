import type { RelevoConfig } from "../config/config";
import type { NodeRef } from "../nodes/node-driver";

/**
 * The cluster's nodes, from configuration. Names do not say roles: the primary
 * role moves on failover. `node1` is the preferred primary (the one failback
 * returns the role to); every other node starts as a streaming replica.
 */
export function clusterMembers(config: Pick<RelevoConfig, "host" | "primaryPort" | "replicaPort" | "replicaCount">): NodeRef[] {
  const nodes: NodeRef[] = [{ name: "node1", host: config.host, port: config.primaryPort }];
  for (let i = 0; i < config.replicaCount; i += 1) {
    nodes.push({ name: `node${i + 2}`, host: config.host, port: config.replicaPort + i });
  }
  return nodes;
}
