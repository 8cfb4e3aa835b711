import { randomBytes } from "node:crypto";
import type Redis from "ioredis";
import { ErrorCode, RelevoError } from "../errors";
import type { RedisKeys } from "../redis/keys";
import { sleep } from "../util/sleep";

/**
 * Compare-and-delete: the marker is removed only while it still holds the
 * releasing capture's token, so a capture whose marker expired never removes
 * the one another capture set since.
 */
const RELEASE_IF_OWNED = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end`;

export interface HoldOptions {
  /** How long the mark lives at most: it expires on its own if its capture's service dies. */
  readonly ttlMs: number;
  /** How long to wait while another capture holds the replica (one short pause), then LOCK_HELD. */
  readonly waitMs: number;
  readonly pollMs?: number;
}

/**
 * Who holds a replica's replay paused. A reference point's capture marks the
 * replica in Redis before it pauses replay and clears the mark after it
 * resumed; the mark expires on its own, so a capture whose service died
 * mid-way does not hold the replica forever. The replay pause watch leaves a
 * marked replica alone and resumes an unmarked one found paused.
 *
 * One capture at a time per replica (two verifications of different
 * backups, in one instance or two, may pick the same one): the mark is set
 * only where there is none (SET NX) and holds its capture's token, and a
 * release removes only its own mark. Otherwise one capture's release would
 * clear the mark under the other's pause, and its resume would end the
 * other's pause early.
 */
export class ReplayPauseMarkers {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Pick<RedisKeys, "replayPauseMarker">,
  ) {}

  /** Marks `node` for this capture, waiting while another holds it; returns the token to release it with. */
  async hold(node: string, options: HoldOptions): Promise<string> {
    const token = `${new Date().toISOString()} ${randomBytes(8).toString("hex")}`;
    const deadline = Date.now() + options.waitMs;
    for (;;) {
      if ((await this.redis.set(this.keys.replayPauseMarker(node), token, "PX", options.ttlMs, "NX")) === "OK") return token;
      if (Date.now() >= deadline)
        throw new RelevoError(
          ErrorCode.LockHeld,
          `${node}'s replay is held paused by another reference point's capture (waited ${options.waitMs} ms); retry later`,
          { details: { node } },
        );
      await sleep(options.pollMs ?? 100);
    }
  }

  /** Clears the mark if it is still `token`'s. */
  async release(node: string, token: string): Promise<void> {
    await this.redis.eval(RELEASE_IF_OWNED, 1, this.keys.replayPauseMarker(node), token);
  }

  async held(node: string): Promise<boolean> {
    return (await this.redis.exists(this.keys.replayPauseMarker(node))) === 1;
  }
}
