import { fixedTrust } from "../../src/postgres/connection";
import type { BackupManifest } from "../../src/backup/manifest";
import {
  buildSnapshot,
  membersBeingRemade,
  operationHealthReasons,
  type NodeObservation,
  type NodeState,
  type SlotStatus,
} from "../../src/cluster/topology";
import { createServer } from "node:net";
import type { EventLog } from "../../src/events/event-log";
import type { ClusterStateStore } from "../../src/failover/cluster-state";
import { LostSlotRepair } from "../../src/failover/lost-slot-repair";
import {
  archiveBridges,
  bridgesEnded,
  BRIDGE_CAP_MS,
  BRIDGE_STALL_MS,
  bridgeBegun,
  bridgeSeen,
  lostSlotRepairs,
  type Bridge,
  type LostSlotInputs,
} from "../../src/failover/lost-slot-rules";
import type { FailoverOperations } from "../../src/failover/operations";
import { createLogger } from "../../src/log";
import { openGaps, settledBy } from "../../src/wal/archive-gaps";
import { afterRound, streamedAfterMs } from "../../src/wal/archiver-failures";
import { lostSlotGap, walRemovedBeforeArchive } from "../../src/wal/receive-start";
import { runningLocalDriver as driver } from "../helpers/node-facts";

const slot = (name: string, walStatus: string, restartLsn: string | null = null): SlotStatus => ({
  name,
  type: "physical",
  active: false,
  restartLsn,
  walStatus,
  retainedBytes: null,
});
const state = (role: "primary" | "replica", overrides: Partial<NodeState> = {}): NodeState => ({
  role,
  version: "15",
  clusterName: "",
  readOnly: role === "replica",
  timeline: 1,
  currentLsn: "0/9000000",
  receivedLsn: role === "replica" ? "0/3000000" : null,
  replayedLsn: role === "replica" ? "0/3000100" : null,
  lastReplayAt: null,
  replayLagSeconds: null,
  replayPause: null,
  receiver: null,
  senders: [],
  slots: [],
  ...overrides,
});
const observe = (name: string, probe: NodeObservation["probe"]): NodeObservation => ({
  name,
  host: "127.0.0.1",
  port: 1,
  probe: "role" in probe ? { ...probe, clusterName: `c-${name}` } : probe,
  driver,
  fallbackRole: "replica",
  checkedAt: "t",
});
const streaming = {
  status: "streaming",
  senderHost: "127.0.0.1",
  senderPort: 1,
  slotName: "relevo_node2",
  lastMessageAt: null,
  silentMs: 0,
};

/** node1 the primary with `slots`; node2 a replica (not streaming unless said so). */
const inputs = (
  slots: SlotStatus[],
  overrides: Partial<LostSlotInputs> & { node2?: NodeState | { error: string } } = {},
): LostSlotInputs => ({
  snapshot: buildSnapshot(
    "c",
    [observe("node1", state("primary", { slots })), observe("node2", overrides.node2 ?? state("replica"))],
    1e9,
    "now",
  ),
  recordedPrimary: "node1",
  fenced: [],
  slotOf: (name) => `relevo_${name}`,
  archiveSlot: "relevo_archive",
  archivedSegments: new Set([1, 2, 3, 4, 5, 6, 7, 8]),
  reseeding: [],
  bridges: new Map(),
  now: 100000,
  ...overrides,
});

describe("a replica whose slot was lost (pure)", () => {
  const archiver = slot("relevo_archive", "reserved", "0/9000100");

  test("the archive holds what it needs up to the archiver's position: bridged from the archive, nothing destroyed", () => {
    expect(lostSlotRepairs(inputs([slot("relevo_node2", "lost"), archiver]))).toEqual([
      expect.objectContaining({ action: "bridge", node: "node2", slot: "relevo_node2" }),
    ]);
  });

  test("a hole in the archive, or the archiver's slot lost too: seeded again", () => {
    const hole = inputs([slot("relevo_node2", "lost"), archiver], { archivedSegments: new Set([1, 2, 3, 5, 6, 7, 8]) });
    expect(lostSlotRepairs(hole)).toEqual([expect.objectContaining({ action: "reseed", node: "node2" })]);
    const archiverLost = inputs([slot("relevo_node2", "lost"), slot("relevo_archive", "lost")]);
    expect(lostSlotRepairs(archiverLost)).toEqual([expect.objectContaining({ action: "reseed", node: "node2" })]);
    // Made again past a hole: the archiver's new slot starts where the archive has nothing before it.
    const resumedPastHole = inputs([slot("relevo_node2", "lost"), slot("relevo_archive", "reserved", "0/C000028")]);
    expect(lostSlotRepairs(resumedPastHole)).toEqual([expect.objectContaining({ action: "reseed" })]);
  });

  test("a bridged replica whose replay advances is given time; one whose replay stalls for 30 s, or that is not back after the cap, is seeded again", () => {
    const judged = (bridge: Bridge, now: number) =>
      lostSlotRepairs(inputs([slot("relevo_node2", "lost"), archiver], { bridges: new Map([["node2", bridge]]), now }));
    // Replaying segment after segment: a minute after the bridge, still carried.
    let bridge = bridgeBegun("0/3000100", 0);
    bridge = bridgeSeen(bridge, "0/5000000", 20000);
    bridge = bridgeSeen(bridge, "0/8000000", 45000);
    expect(judged(bridge, 60000)).toEqual([]);
    // Then nothing more replayed (the same position, an older one, none known): stalled since 45 s.
    expect(bridgeSeen(bridge, "0/8000000", 50000)).toBe(bridge);
    expect(bridgeSeen(bridge, "0/7000000", 55000)).toBe(bridge);
    expect(bridgeSeen(bridge, null, 60000)).toBe(bridge);
    expect(judged(bridge, 45000 + BRIDGE_STALL_MS - 1)).toEqual([]);
    const stalled = judged(bridge, 45000 + BRIDGE_STALL_MS);
    expect(stalled.map(({ action, node }) => ({ action, node }))).toEqual([{ action: "reseed", node: "node2" }]);
    expect(stalled[0]!.reason).toMatch(/has not advanced it for 30 s$/);
    // Still advancing, but slower than the primary writes: given up at the cap.
    const endless: Bridge = { since: 0, replayedLsn: "0/9000000", progressAt: BRIDGE_CAP_MS - 1000 };
    expect(judged(endless, BRIDGE_CAP_MS - 1)).toEqual([]);
    const capped = judged(endless, BRIDGE_CAP_MS);
    expect(capped.map(({ action }) => action)).toEqual(["reseed"]);
    expect(capped[0]!.reason).toMatch(/back to streaming in 120 min$/);
  });

  test("nothing for a streaming replica, a fenced or unreachable one, a slot not lost, or a snapshot naming another primary", () => {
    const lost = [slot("relevo_node2", "lost"), archiver];
    expect(lostSlotRepairs(inputs(lost, { node2: state("replica", { receiver: streaming }) }))).toEqual([]);
    expect(lostSlotRepairs(inputs(lost, { fenced: ["node2"] }))).toEqual([]);
    expect(lostSlotRepairs(inputs(lost, { node2: { error: "connection refused" } }))).toEqual([]);
    expect(lostSlotRepairs(inputs([slot("relevo_node2", "unreserved"), archiver]))).toEqual([]);
    expect(lostSlotRepairs(inputs(lost, { recordedPrimary: "node2" }))).toEqual([]);
  });

  test("a replica a failed reseed left destroyed (unreachable, its slot dropped) is seeded again, and only it", () => {
    const destroyed = inputs([archiver], { node2: { error: "connection refused" }, reseeding: ["node2"] });
    expect(lostSlotRepairs(destroyed)).toEqual([
      { action: "reseed", node: "node2", slot: "relevo_node2", reason: "a reseed destroyed it and did not seed it again" },
    ]);
    // Recorded while its slot is lost too: one reseed, not two.
    expect(lostSlotRepairs(inputs([slot("relevo_node2", "lost"), archiver], { reseeding: ["node2"] }))).toHaveLength(1);
    // Never the primary, nor on a snapshot of another primary.
    expect(lostSlotRepairs(inputs([archiver], { reseeding: ["node1"] }))).toEqual([]);
    expect(lostSlotRepairs(inputs([archiver], { reseeding: ["node2"], recordedPrimary: "node2" }))).toEqual([]);
  });

  test("a member recorded as destroyed that streams from the primary over its slot (made again another way): the record dropped, not reseeded", () => {
    const held = { ...slot("relevo_node2", "reserved", "0/9000000"), active: true };
    // Seeded by `relevo up`, or rewound by a resumed rejoin: a healthy replica, not to be destroyed and copied again.
    const remade = lostSlotRepairs(inputs([held, archiver], { node2: state("replica", { receiver: streaming }), reseeding: ["node2"] }));
    expect(remade.map(({ action, node, slot: name }) => ({ action, node, slot: name }))).toEqual([
      { action: "unrecord", node: "node2", slot: "relevo_node2" },
    ]);
    expect(remade[0]!.reason).toMatch(/streams from node1 over relevo_node2/);
    // Anything less is a half-made member: answering but not streaming, streaming without its slot, its slot lost.
    const reseeded = (overrides: Partial<LostSlotInputs> & { node2?: NodeState }, slots: SlotStatus[] = [held, archiver]) =>
      lostSlotRepairs(inputs(slots, { reseeding: ["node2"], ...overrides })).map(({ action }) => action);
    expect(reseeded({ node2: state("replica") })).toEqual(["reseed"]);
    expect(reseeded({ node2: state("replica", { receiver: streaming }) }, [archiver])).toEqual(["reseed"]);
    expect(reseeded({ node2: state("replica", { receiver: streaming }) }, [{ ...held, walStatus: "lost" }, archiver])).toEqual(["reseed"]);
    expect(reseeded({ node2: state("replica", { receiver: streaming }) }, [{ ...held, active: false }, archiver])).toEqual(["reseed"]);
  });

  test("never the primary: its own slots are not a replica's", () => {
    // A slot named after the primary (left from when it was a replica) does not make it a candidate.
    expect(lostSlotRepairs(inputs([slot("relevo_node1", "lost"), archiver])).map((repair) => repair.node)).toEqual([]);
  });

  test("a bridge ends (its feed stopped) once its replica streams, is no member, is not in the snapshot, or its slot is not lost any more", () => {
    const lost = [slot("relevo_node2", "lost"), slot("relevo_archive", "reserved", "0/9000100")];
    const ended = (options: {
      slots?: SlotStatus[];
      node2?: NodeState | { error: string };
      members?: string[];
      primary?: string;
      dropNode2?: boolean;
    }) => {
      const snapshot = inputs(options.slots ?? lost, { node2: options.node2 }).snapshot;
      return bridgesEnded({
        bridged: ["node2"],
        members: options.members ?? ["node1", "node2"],
        snapshot: options.dropNode2 ? { ...snapshot, nodes: snapshot.nodes.filter((node) => node.name !== "node2") } : snapshot,
        primary: options.primary ?? "node1",
        slotOf: (name) => `relevo_${name}`,
      });
    };
    expect(ended({})).toEqual([]); // still carried by the archive
    expect(ended({ node2: state("replica", { receiver: streaming }) })).toEqual(["node2"]);
    expect(ended({ members: ["node1"] })).toEqual(["node2"]); // removed (removeReplica)
    expect(ended({ dropNode2: true })).toEqual(["node2"]);
    expect(ended({ slots: [slot("relevo_node2", "reserved"), slot("relevo_archive", "reserved", "0/9000100")] })).toEqual(["node2"]);
    expect(ended({ slots: [slot("relevo_archive", "reserved", "0/9000100")] })).toEqual(["node2"]); // its slot dropped
    expect(ended({ primary: "node3" })).toEqual(["node2"]); // another primary, whose slot for it is not lost
  });

  test("the archive bridges only every segment from the one needed to the archiver's", () => {
    const archived = new Set([3, 4, 5]);
    expect(archiveBridges(archived, "0/3000100", "0/6000028")).toBe(true);
    expect(archiveBridges(archived, "0/3000100", "0/7000028")).toBe(false);
    expect(archiveBridges(archived, "0/2000100", "0/6000028")).toBe(false);
    expect(archiveBridges(archived, null, "0/6000028")).toBe(false);
    expect(archiveBridges(archived, "0/3000100", null)).toBe(false);
  });
});

describe("the monitor's bridge of a replica whose slot was lost", () => {
  test("a replica that did not take the archive (ALTER SYSTEM refused: it does not answer) is bridged again next round, and reported only once bridged", async () => {
    // A port nothing listens on: every connection to node2 is refused at once.
    const closed = await new Promise<number>((resolve) => {
      const server = createServer().listen(0, "127.0.0.1", () => {
        const { port } = server.address() as { port: number };
        server.close(() => resolve(port));
      });
    });
    const emitted: string[] = [];
    const reseeded: string[] = [];
    const fed: string[] = [];
    const snapshot = { ...inputs([slot("relevo_node2", "lost"), slot("relevo_archive", "reserved", "0/9000100")]).snapshot };
    const repairs = new LostSlotRepair({
      nodes: [
        { name: "node1", host: "127.0.0.1", port: closed },
        { name: "node2", host: "127.0.0.1", port: closed },
      ],
      superuser: { user: "postgres", password: "unused", database: "postgres", trustedCa: fixedTrust("") },
      nodeTimeoutMs: 2000,
      operations: { reseed: (name: string) => Promise.resolve(void reseeded.push(name)) } as unknown as FailoverOperations,
      events: { emit: (event: { kind: string }) => Promise.resolve(void emitted.push(event.kind)) } as unknown as EventLog,
      logger: createLogger({ level: "silent" }),
      topology: () => ({ ...snapshot, collectedAt: new Date().toISOString() }),
      archive: {
        segments: () => Promise.resolve(new Set([1, 2, 3, 4, 5, 6, 7, 8])),
        feed: (node, from) => {
          fed.push(`feed ${node.name} from ${from?.lsn ?? "the archive's start"}`);
          return Promise.resolve({ close: () => Promise.resolve(void fed.push(`stop ${node.name}`)) });
        },
      },
      // Never written: no member is recorded as destroyed, so there is no record to drop.
      store: {} as ClusterStateStore,
      journal: { lockName: "lock" },
    });
    const recorded = { primary: "node1", epoch: 1, fenced: [], syncSet: [], eligible: [], joining: {}, updatedAt: "2000-01-01T00:00:00Z" };
    const guard = { key: "lock", value: "holder" };
    await expect(repairs.repair(recorded, guard)).rejects.toThrow(/ECONNREFUSED|connect/);
    // Not counted as bridged: tried again (not left waiting out a bridge it never had), and no slot-lost event said it was bridged.
    await expect(repairs.repair(recorded, guard)).rejects.toThrow(/ECONNREFUSED|connect/);
    expect(emitted).toEqual([]);
    expect(reseeded).toEqual([]);
    // Its relevo_wal/ is fed before restore_command names the script there, and no longer once the setting was refused.
    // From its replay position on (its `expected` list does not grow with the whole archive).
    expect(fed).toEqual(["feed node2 from 0/3000100", "stop node2", "feed node2 from 0/3000100", "stop node2"]);
  });
});

describe("the archive's slot lost (pure)", () => {
  const history = [
    { timeline: 1, switchLsn: "0/5800000" },
    { timeline: 2, switchLsn: null },
  ];

  test("the hole runs from the segment after the last complete one (or the .partial's) to the one before the new slot's", () => {
    expect(
      lostSlotGap(["000000010000000000000002", "000000010000000000000003.partial"], [{ timeline: 1, switchLsn: null }], "0/7000028"),
    ).toEqual({
      gap: { timeline: 1, from: "000000010000000000000003", to: "000000010000000000000006" },
      placeholder: "000000010000000000000007.partial",
    });
    // Each segment named on the timeline it lies on.
    expect(lostSlotGap(["000000010000000000000003"], history, "0/8000028")).toEqual({
      gap: { timeline: 2, from: "000000010000000000000004", to: "000000020000000000000007" },
      placeholder: "000000020000000000000008.partial",
    });
  });

  test("nothing missing: the primary still has the WAL where the archive ends, or the archive is empty", () => {
    expect(lostSlotGap(["000000010000000000000006"], [{ timeline: 1, switchLsn: null }], "0/7000028")).toBeNull();
    expect(lostSlotGap([], [{ timeline: 1, switchLsn: null }], "0/7000028")).toBeNull();
  });

  test("the primary's refusal of WAL it removed is the hole's trigger; other ends of pg_receivewal are not", () => {
    expect(
      walRemovedBeforeArchive(
        "pg_receivewal: error: unexpected termination of replication stream: ERROR:  requested WAL segment 000000010000000000000004 has already been removed\n",
      ),
    ).toBe(true);
    expect(walRemovedBeforeArchive("pg_receivewal: error: could not connect to server: Connection refused")).toBe(false);
    expect(walRemovedBeforeArchive('pg_receivewal: error: replication slot "relevo_archive" does not exist')).toBe(false);
  });

  test("a gap stays open until a completed full backup starts past it", () => {
    const gap = { timeline: 1, from: "000000010000000000000003", to: "000000010000000000000006" };
    const backup = (type: BackupManifest["type"], startLsn: string, status: BackupManifest["status"] = "completed") =>
      ({ type, startLsn, status }) as BackupManifest;
    expect(openGaps([gap], [])).toEqual([gap]);
    expect(openGaps([gap], [backup("full", "0/6000028")])).toEqual([gap]);
    expect(openGaps([gap], [backup("incremental", "0/7000028"), backup("full", "0/7000028", "failed")])).toEqual([gap]);
    expect(openGaps([gap], [backup("full", "0/7000028")])).toEqual([]);
    // Kept in Redis: a gap a full backup started past is settled once, and a settled one never again.
    const record = { ...gap, cause: "", reportedAt: "2026-12-06T00:00:00Z", settled: false };
    expect(settledBy([record], [backup("full", "0/7000028")])).toEqual([record]);
    expect(settledBy([record], [backup("full", "0/6000028")])).toEqual([]);
    expect(settledBy([{ ...record, settled: true }], [backup("full", "0/7000028")])).toEqual([]);
  });
});

describe("health while a slot is lost (pure)", () => {
  test("a lost slot on the primary is a reason; so is a reseed in flight", () => {
    const snapshot = buildSnapshot(
      "c",
      [
        observe("node1", state("primary", { slots: [slot("relevo_node2", "lost")] })),
        observe("node2", state("replica", { receiver: streaming })),
      ],
      1e9,
      "now",
    );
    expect(snapshot.health).toBe("degraded");
    expect(snapshot.healthReasons).toEqual(["slot relevo_node2 on node1 was invalidated (max_slot_wal_keep_size)"]);
    expect(operationHealthReasons({ kind: "reseed", from: "node2", reason: "its slot was lost" })).toEqual([
      "node2 is being seeded again: its slot was lost",
    ]);
    expect(operationHealthReasons({ kind: "rejoin", from: "node2", reason: "automatic rejoin" })).toEqual([]);
    expect(operationHealthReasons(null)).toEqual([]);
  });

  test("members being re-made: a reseed in flight, and those a failed seed left destroyed, each a reason and flagged on its node", () => {
    const reseed = { kind: "reseed", from: "node2", reason: "its slot was lost" };
    const rejoin = { kind: "rejoin", from: "node3", reason: "automatic rejoin" };
    // node3 left destroyed by a rejoin whose seed failed, while node2's reseed runs: both re-made, each said once.
    expect(membersBeingRemade(reseed, { reseeding: ["node3"] })).toEqual(["node2", "node3"]);
    expect(operationHealthReasons(reseed, { reseeding: ["node2", "node3"] })).toEqual([
      "node2 is being seeded again: its slot was lost",
      "node3 was destroyed to be seeded again and is not seeded yet: the failover monitor seeds it again",
    ]);
    // A rejoin in flight re-makes nothing by itself; what the state records is still re-made.
    expect(membersBeingRemade(rejoin, {})).toEqual([]);
    expect(membersBeingRemade(rejoin, { reseeding: ["node3"] })).toEqual(["node3"]);
    expect(operationHealthReasons(null, { reseeding: ["node3"] })).toHaveLength(1);
    // A recorded member promoted since (the record went stale: it was made again another way): the primary is never called destroyed.
    const promoted = { primary: "node3", reseeding: ["node3"] };
    expect(membersBeingRemade(null, promoted)).toEqual([]);
    expect(operationHealthReasons(null, promoted)).toEqual([]);
    expect(membersBeingRemade(reseed, { primary: "node2", reseeding: ["node3"] })).toEqual(["node3"]);
    expect(operationHealthReasons(reseed, { primary: "node2" })).toEqual([]);
    // On the node: the observation's flag, false when not said.
    const snapshot = buildSnapshot(
      "c",
      [
        observe("node1", state("primary")),
        { ...observe("node2", { error: "connection refused" }), reseeding: true },
        observe("node3", state("replica")),
      ],
      1e9,
      "now",
    );
    expect(snapshot.nodes.map((node) => [node.name, node.reseeding])).toEqual([
      ["node1", false],
      ["node2", true],
      ["node3", false],
    ]);
  });
});

describe("the archiver's failure streak (pure)", () => {
  const round = (ranMs: number) => ({ ranMs, streamedAfterMs: 10_000 });
  /** The `failing` verdicts of rounds run in turn (each: how long pg_receivewal ran). */
  const failingAfter = (runs: readonly number[]): boolean[] => {
    let failures = 0;
    return runs.map((ranMs) => {
      const step = afterRound(failures, round(ranMs));
      failures = step.failures;
      return step.failing;
    });
  };

  test("archive:failing on the third failure in a row, once per streak; a round that streamed ends the streak", () => {
    expect(failingAfter([0, 0, 0, 0, 0])).toEqual([false, false, true, false, false]);
    // Streamed for a minute, then three failures again (a primary restarted, then refusing): a second event.
    expect(failingAfter([0, 0, 0, 0, 60_000, 0, 0, 0])).toEqual([false, false, true, false, false, false, false, true]);
    // Failures with streaming between them are no streak: never reported.
    expect(failingAfter([0, 0, 60_000, 0, 0, 60_000, 0, 0])).not.toContain(true);
    // A run shorter than the bound did not stream (a refused start point ends pg_receivewal at once).
    expect(failingAfter([500, 500, 500])).toEqual([false, false, true]);
  });

  test("the retry waits 0.5 s more per failure of the streak, up to 5 s, and 0.5 s again once it streamed", () => {
    expect(afterRound(0, round(0))).toEqual({ failures: 1, failing: false, retryInMs: 500 });
    expect(afterRound(1, round(0)).retryInMs).toBe(1000);
    expect(afterRound(20, round(0)).retryInMs).toBe(5000);
    expect(afterRound(20, round(60_000))).toEqual({ failures: 0, failing: false, retryInMs: 500 });
  });

  test("streaming is told from a run of 10 s, longer with a longer RELEVO_NODE_TIMEOUT_MS", () => {
    expect(streamedAfterMs(2000)).toBe(10_000);
    expect(streamedAfterMs(9000)).toBe(27_000);
  });
});
