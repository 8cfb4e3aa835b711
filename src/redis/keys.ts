/** Every Redis key of one cluster, in one place; the prefix isolates clusters (and tests). */
export interface RedisKeys {
  /** Every key of the cluster starts with it. */
  readonly prefix: string;
  readonly events: string;
  readonly topology: string;
  readonly topologyChannel: string;
  readonly eventsChannel: string;
}

/** Pub/sub topics (shared by every instance through Redis). */
export const TOPOLOGY_TOPIC = "TOPOLOGY_CHANGED";
export const EVENTS_TOPIC = "CLUSTER_EVENT";

export function redisKeys(clusterName: string): RedisKeys {
  const prefix = `relevo:${clusterName}`;
  return {
    prefix,
    events: `${prefix}:events`,
    topology: `${prefix}:topology`,
    topologyChannel: TOPOLOGY_TOPIC,
    eventsChannel: EVENTS_TOPIC,
  };
}

/** Consumer group of the consolidator on the events stream. */
export const CONSOLIDATOR_GROUP = "consolidator";
