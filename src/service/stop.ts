import type Redis from "ioredis";
import type { RunningApi } from "../api/server";
import type { TopologyCollector } from "../cluster/topology-collector";
import type { Consolidator } from "../events/consolidator";
import { CONSOLIDATOR_GROUP, type RedisKeys } from "../redis/keys";
import type { Cleanup, Cleanups } from "./cleanups";
import type { RedisAndEvents } from "./redis-and-events";

export interface StopOptions {
  /** Recorded in the `service:stopping` event. */
  readonly reason?: string;
  /** Leaves the PostgreSQL nodes running. */
  readonly keepNodes?: boolean;
  /** Leaves Relevo's own Redis running. */
  readonly keepRedis?: boolean;
}

/**
 * Stops the API and the collector first (nothing new comes in), lets the
 * consolidator write what is pending, then unwinds every other cleanup in
 * reverse start order, less those the options keep.
 */
export async function stopService(
  service: {
    readonly cleanups: Cleanups;
    readonly redis: RedisAndEvents;
    readonly stopNodes: Cleanup;
    readonly api: RunningApi;
    readonly collector: TopologyCollector;
    readonly consolidator: Consolidator;
  },
  options: StopOptions,
): Promise<void> {
  const { cleanups, redis, stopNodes, api, collector, consolidator } = service;
  await redis.events.emit({
    kind: "service:stopping",
    severity: "info",
    node: null,
    message: `Relevo stopping: ${options.reason ?? "requested"}`,
    data: { reason: options.reason ?? "requested" },
  });
  await api.stop();
  await collector.stop();
  await drainConsolidator(consolidator, redis.client, redis.keys);
  if (options.keepNodes) cleanups.remove(stopNodes);
  if (options.keepRedis) cleanups.remove(redis.stopServer);
  await cleanups.unwind();
}

/** Gives the consolidator a moment to write what is pending before the service stops. */
async function drainConsolidator(consolidator: Consolidator, redis: Redis, keys: RedisKeys): Promise<void> {
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline) {
    const pending = (await redis.xpending(keys.events, CONSOLIDATOR_GROUP).catch(() => [0])) as [number, ...unknown[]];
    const lag = await groupLag(redis, keys);
    if (Number(pending[0]) === 0 && lag === 0) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  await consolidator.stop();
}

async function groupLag(redis: Redis, keys: RedisKeys): Promise<number> {
  try {
    const groups = (await redis.call("XINFO", "GROUPS", keys.events)) as Array<Array<string | number | null>>;
    for (const group of groups) {
      const fields = new Map<string, unknown>();
      for (let i = 0; i < group.length; i += 2) fields.set(String(group[i]), group[i + 1]);
      if (fields.get("name") === CONSOLIDATOR_GROUP) return Number(fields.get("lag") ?? 0);
    }
  } catch {
    // no group yet, or Redis away
  }
  return 0;
}
