import type Redis from "ioredis";
import type { RedisKeys } from "../redis/keys";

/**
 * Who holds a replica's replay paused. A reference point's capture marks the
 * replica in Redis before it pauses replay and clears the mark after it
 * resumed; the mark expires on its own, so a capture whose service died
 * mid-way does not hold the replica forever. The replay pause watch leaves a
 * marked replica alone and resumes an unmarked one found paused.
 */
export class ReplayPauseMarkers {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Pick<RedisKeys, "replayPauseMarker">,
  ) {}

  /** Marks `node` for at most `ttlMs`. */
  async hold(node: string, ttlMs: number): Promise<void> {
    await this.redis.set(this.keys.replayPauseMarker(node), new Date().toISOString(), "PX", ttlMs);
  }

  async release(node: string): Promise<void> {
    await this.redis.del(this.keys.replayPauseMarker(node));
  }

  async held(node: string): Promise<boolean> {
    return (await this.redis.exists(this.keys.replayPauseMarker(node))) === 1;
  }
}
