import type Redis from "ioredis";
import type { RedisKeys } from "../redis/keys";
import { ClusterStateStore, type ClusterState } from "./cluster-state";

/**
 * The recorded state of a cluster rebuilt from the repository (relevo
 * restore --cluster): every node is new, so nothing recorded about the old
 * ones holds. `primary` is the restored node; no node is fenced (a fence
 * recorded by a failover before the loss would have the restored primary
 * killed by relevo up); the synchronous set and the eligible replicas start
 * empty, as on the rebuilt primary (a restore clears
 * synchronous_standby_names), and fill as the replicas catch up. The epoch
 * goes on from the old one, so anything still holding the old value writes
 * nothing. Pure.
 */
export function rebuiltState(previous: ClusterState | null, primary: string): Omit<ClusterState, "updatedAt"> {
  return { primary, epoch: (previous?.epoch ?? 0) + 1, fenced: [], syncSet: [], eligible: [], joining: {} };
}

/**
 * Makes the recorded state (in Redis) agree with the rebuilt cluster: the
 * state above, no operation in flight (a journaled failover of the lost
 * nodes must not be resumed on the new ones), and no last LSN of the old
 * primary (the bound of a failover's loss). Maintenance mode, an operator's
 * choice, is left as it is. Run while no service instance runs.
 */
export async function recordRebuiltCluster(
  redis: Redis,
  keys: Pick<RedisKeys, "clusterState" | "operation" | "primaryLsn">,
  primary: string,
): Promise<ClusterState> {
  await redis.del(keys.operation.entry, keys.operation.lock, keys.primaryLsn);
  const store = new ClusterStateStore(redis, keys.clusterState);
  return store.update(null, (previous) => ({ ...rebuiltState(previous, primary), updatedAt: "" }));
}
