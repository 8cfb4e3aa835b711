import Redis from "ioredis";
import { ErrorCode, RelevoError } from "../../src/errors";
import { liveHolders, recordRebuiltCluster } from "../../src/failover/rebuilt-cluster";
import { redisKeys } from "../../src/redis/keys";

describe("restore --cluster and the recorded state of a live or unreachable Redis", () => {
  test("a held lease or lock (a live TTL, or none) says an instance is alive; an absent key does not", () => {
    expect(
      liveHolders([
        { what: "the failover monitor's lease", ttlMs: 1800 },
        { what: "the WAL archiver's lease", ttlMs: -2 },
        { what: "the backup lease", ttlMs: -1 },
        { what: "the operation lock", ttlMs: 0 },
      ]),
    ).toEqual(["the failover monitor's lease", "the backup lease"]);
    expect(liveHolders([{ what: "the operation lock", ttlMs: -2 }])).toEqual([]);
  });

  test("a state that cannot be written is retried, then reported with its own remedy, never 'run relevo up'", async () => {
    // Nothing listens on port 1: every command fails at once, as against a Redis that went away.
    const redis = new Redis({ port: 1, lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => null });
    try {
      const keys = redisKeys("main");
      const failure = await recordRebuiltCluster(redis, keys, "node1").catch((error: unknown) => error);
      expect(failure).toBeInstanceOf(RelevoError);
      const error = failure as RelevoError;
      expect(error.code).toBe(ErrorCode.CommandFailed);
      expect(error.details).toEqual({ stateRecorded: false });
      expect(error.message).toContain("node1 was restored, but the rebuilt cluster's state could not be recorded in Redis");
      expect(error.message).toContain(`redis-cli DEL ${keys.clusterState} `);
      expect(error.message).not.toMatch(/seeds missing replicas/);
    } finally {
      redis.disconnect();
    }
  });
});
