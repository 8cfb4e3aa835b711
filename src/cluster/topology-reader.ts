import { randomBytes } from "node:crypto";
import type Redis from "ioredis";
import type { RedisKeys } from "../redis/keys";
import type { Logger } from "../log";
import type { ClusterSnapshot } from "./topology";

const INVALIDATE_CHANNEL = "__redis__:invalidate";
const MAX_AGE_MS = 1000;

/**
 * Reads the latest topology snapshot, which lives in Redis, for the API.
 *
 * The snapshot changes once per poll while the API may read it thousands of
 * times a second, and on this kind of machine the round trip to Redis is
 * most of a request's cost. So the reader uses Redis's server-assisted
 * client-side caching: with `CLIENT TRACKING ... BCAST PREFIX <key>` Redis
 * tells a dedicated connection whenever the key changes, and the local copy
 * is dropped at once. Redis stays the source of truth:
 * - a read is served from the local copy only while both connections are up
 *   and tracking is confirmed; otherwise it goes to Redis (and fails with
 *   SERVICE_UNAVAILABLE while Redis is away, like every other read);
 * - an invalidation that arrives while a GET is in flight prevents that GET's
 *   reply from being cached (a generation counter), so a stale value is never
 *   kept;
 * - a local copy is at most MAX_AGE_MS old, which bounds staleness should the
 *   invalidation connection die without the client noticing yet.
 */
export class TopologyReader {
  private cached: ClusterSnapshot | null = null;
  private cachedAt = 0;
  private lastText: string | null = null;
  private lastParsed: ClusterSnapshot | null = null;
  private generation = 0;
  private tracking = false;
  private readonly listenerName = `relevo-invalidations-${process.pid}-${randomBytes(4).toString("hex")}`;

  constructor(
    private readonly redis: Redis,
    /** A connection of its own: it sits in subscriber mode. */
    private readonly invalidations: Redis,
    private readonly keys: RedisKeys,
    private readonly logger: Logger,
  ) {}

  /** Subscribes to invalidations and turns tracking on; again after every reconnect. */
  async start(): Promise<void> {
    this.invalidations.on("message", (channel: string) => {
      if (channel === INVALIDATE_CHANNEL) this.invalidate();
    });
    const reset = (): void => {
      this.tracking = false;
      this.invalidate();
    };
    this.redis.on("close", reset);
    this.invalidations.on("close", reset);
    this.redis.on("ready", () => void this.enableTracking());
    // ioredis emits "ready" before it subscribes the connection again, and only a subscribed listener can be
    // found: a PING sent after that SUBSCRIBE is answered after it.
    this.invalidations.on("ready", () => setImmediate(() => void this.afterResubscribe()));
    // Found by its name (below), and named again on every reconnect: ioredis renames a connection from its
    // options when it connects, so a name set by command alone is lost with the first reconnect, and tracking
    // (which needs the listener's id) would never be turned on again.
    this.invalidations.options.connectionName = this.listenerName;
    await this.invalidations.client("SETNAME", this.listenerName).catch(() => undefined);
    await this.invalidations.subscribe(INVALIDATE_CHANNEL).catch(() => undefined);
    await this.enableTracking();
  }

  private async afterResubscribe(): Promise<void> {
    await this.invalidations.ping().catch(() => undefined);
    await this.enableTracking();
  }

  async read(): Promise<ClusterSnapshot | null> {
    const usable = this.tracking && this.redis.status === "ready" && this.invalidations.status === "ready";
    if (usable && this.cached && performance.now() - this.cachedAt < MAX_AGE_MS) return this.cached;
    const generation = this.generation;
    const text = await this.redis.get(this.keys.topology);
    // Same text, same object: callers may rely on identity to know nothing changed.
    const snapshot = text === null ? null : text === this.lastText ? this.lastParsed : (JSON.parse(text) as ClusterSnapshot);
    this.lastText = text;
    this.lastParsed = snapshot;
    if (usable && generation === this.generation) {
      this.cached = snapshot;
      this.cachedAt = performance.now();
    }
    return snapshot;
  }

  private invalidate(): void {
    this.generation += 1;
    this.cached = null;
  }

  private async enableTracking(): Promise<void> {
    this.tracking = false;
    this.invalidate();
    if (this.redis.status !== "ready" || this.invalidations.status !== "ready") return;
    try {
      // The listener's id changes with every reconnect: look it up by its name.
      const list = (await this.redis.call("CLIENT", "LIST", "TYPE", "pubsub")) as string;
      const line = list.split("\n").find((entry) => entry.includes(` name=${this.listenerName} `));
      const id = line ? /(?:^|\s)id=(\d+)/.exec(line)?.[1] : undefined;
      if (!id) return; // not subscribed yet: its "ready" will call again
      // Off first: this connection may still track for the listener's previous id, and Redis refuses to register
      // the same prefix twice (or to change the redirection) while tracking is on.
      await this.redis.call("CLIENT", "TRACKING", "OFF");
      await this.redis.call("CLIENT", "TRACKING", "ON", "REDIRECT", id, "BCAST", "PREFIX", this.keys.topology);
      this.invalidate();
      this.tracking = true;
    } catch (error) {
      this.logger.warn({ err: (error as Error).message }, "topology reads go to Redis every time: client tracking unavailable");
    }
  }
}
