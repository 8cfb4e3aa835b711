import { CONSOLIDATOR_GROUP, EVENTS_TOPIC, TOPOLOGY_TOPIC, redisKeys } from "../../src/redis/keys";

describe("Redis keys", () => {
  // These names are a format: an instance of the next version must find the
  // leases, journal, state and streams the running one wrote. A rename here
  // is a migration, not a refactoring.
  test("every key of a cluster keeps its name", () => {
    const keys = redisKeys("c");
    expect({
      ...keys,
      backupProgress: keys.backupProgress("B"),
      backupLock: keys.backupLock("20261125T224500Z-F"),
      replayPauseMarker: keys.replayPauseMarker("node2"),
    }).toEqual({
      prefix: "relevo:c",
      events: "relevo:c:events",
      topology: "relevo:c:topology",
      topologyChannel: "TOPOLOGY_CHANGED",
      eventsChannel: "CLUSTER_EVENT",
      clusterState: "relevo:c:cluster-state",
      primaryLsn: "relevo:c:primary-lsn",
      maintenance: "relevo:c:maintenance",
      failoverHeldBack: "relevo:c:failover-held-back",
      archiveGaps: "relevo:c:archive-gaps",
      archivePush: "relevo:c:archive-push",
      rateLimit: "relevo:c:rate-limit",
      expiryCheck: "relevo:c:tls:expiry-check",
      leases: {
        walArchiver: "relevo:c:lease:wal-archiver",
        backup: "relevo:c:lease:backup",
        failoverMonitor: "relevo:c:lease:failover-monitor",
      },
      operation: { lock: "relevo:c:operation:lock", entry: "relevo:c:operation", fencing: "relevo:c:operation:fencing" },
      agenda: { prefix: "relevo:c:agenda:", channel: "relevo:c:agenda:notifications" },
      backupProgress: "relevo:c:backup-progress:B",
      backupLock: "relevo:c:backup-lock:20261125T224500Z-F",
      replayPauseMarker: "relevo:c:replay-pause:node2",
    });
    expect([CONSOLIDATOR_GROUP, TOPOLOGY_TOPIC, EVENTS_TOPIC]).toEqual(["consolidator", "TOPOLOGY_CHANGED", "CLUSTER_EVENT"]);
  });
});
