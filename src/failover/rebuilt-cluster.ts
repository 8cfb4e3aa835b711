import type Redis from "ioredis";
import { ErrorCode, RelevoError } from "../errors";
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
  let failure: Error | null = null;
  // A Redis that hiccups is asked again: the restore behind this took minutes, and a state left unwritten is what relevo up must not meet.
  for (let attempt = 1; attempt <= RECORD_ATTEMPTS; attempt += 1) {
    try {
      await redis.del(keys.operation.entry, keys.operation.lock, keys.primaryLsn);
      const store = new ClusterStateStore(redis, keys.clusterState);
      return await store.update(null, (previous) => ({ ...rebuiltState(previous, primary), updatedAt: "" }));
    } catch (error) {
      failure = error as Error;
      if (attempt < RECORD_ATTEMPTS) await new Promise((resolve) => setTimeout(resolve, 200 * attempt));
    }
  }
  const stale = [keys.clusterState, keys.operation.entry, keys.operation.lock, keys.primaryLsn].join(" ");
  throw new RelevoError(
    ErrorCode.CommandFailed,
    `${primary} was restored, but the rebuilt cluster's state could not be recorded in Redis (${failure?.message ?? "unknown error"}): ` +
      `do not run relevo up before the lost cluster's record is gone (it would act on it: fence ${primary} again, resume its operations); ` +
      `once Redis answers, delete its keys (redis-cli DEL ${stale}), then run relevo up`,
    { cause: failure ?? undefined, details: { stateRecorded: false } },
  );
}

const RECORD_ATTEMPTS = 3;

/** A key that keeps work to one live instance, and what it says when it is held. */
export interface LiveHolder {
  readonly what: string;
  /** Its Redis PTTL: > 0 while held (-2: absent; -1: held without expiry). */
  readonly ttlMs: number;
}

/**
 * Which of the leases and locks say a Relevo instance is alive on this
 * cluster's Redis: a held key (with a live TTL, or none). The API port
 * proves only that no instance runs on this host with this port; one on
 * another host or port, sharing RELEVO_REDIS_URL, holds these. Pure.
 */
export function liveHolders(holders: readonly LiveHolder[]): string[] {
  return holders.filter((holder) => holder.ttlMs > 0 || holder.ttlMs === -1).map((holder) => holder.what);
}

/**
 * Refuses to rebuild the recorded state under a live instance (see
 * liveHolders): recordRebuiltCluster deletes the operation lock and writes
 * the state unguarded, which would pull them from under its running
 * operation. `force`: the operator knows the holders are dead (their TTL
 * not yet run out).
 */
export async function refuseWhileInstanceLive(
  redis: Redis,
  keys: Pick<RedisKeys, "leases" | "operation">,
  options: { readonly force: boolean },
): Promise<void> {
  const checked = [
    { what: "the failover monitor's lease", key: keys.leases.failoverMonitor },
    { what: "the WAL archiver's lease", key: keys.leases.walArchiver },
    { what: "the backup lease", key: keys.leases.backup },
    { what: "the operation lock", key: keys.operation.lock },
  ];
  const held = liveHolders(await Promise.all(checked.map(async ({ what, key }) => ({ what, ttlMs: await redis.pttl(key) }))));
  if (held.length === 0 || options.force) return;
  throw new RelevoError(
    ErrorCode.OperationInProgress,
    `another Relevo instance is alive on this cluster's Redis (${held.join(", ")} held): stop it before relevo restore --cluster, ` +
      `or, if it is dead and its leases have yet to expire, wait for them or give --force`,
    { details: { held } },
  );
}
