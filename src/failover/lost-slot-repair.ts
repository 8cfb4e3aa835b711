import type { ClusterSnapshot } from "../cluster/topology";
import type { EventLog } from "../events/event-log";
import type { Logger } from "../log";
import type { NodeRef } from "../nodes/node-driver";
import { withNodeClient, type Credentials } from "../postgres/connection";
import { slotNameFor } from "../postgres/replication-config";
import { nodeRestoreCommand } from "../restore/node-wal";
import { ARCHIVE_SLOT } from "../wal/wal-archiver";
import { without, type ClusterState, type ClusterStateStore, type StateGuard } from "./cluster-state";
import { bridgeBegun, bridgeSeen, bridgesEnded, lostSlotRepairs, type Bridge, type SlotRepair } from "./lost-slot-rules";
import { coolDown, holdOffAfter, type HoldOff } from "./monitor-rules";
import type { FailoverOperations } from "./operations";
import { monotonicNowMs } from "../util/monotonic-clock";

/** A repair that acts on the replica (not only on the record). */
type ReplicaRepair = Exclude<SlotRepair, { readonly action: "unrecord" }>;

export interface LostSlotRepairDeps {
  readonly nodes: readonly NodeRef[];
  readonly superuser: Credentials;
  readonly nodeTimeoutMs: number;
  readonly operations: FailoverOperations;
  readonly events: EventLog;
  readonly logger: Logger;
  readonly topology: () => ClusterSnapshot | null;
  /** The recorded state, and the operation lock: a record is dropped only while no operation owns the state. */
  readonly store: ClusterStateStore;
  readonly journal: { readonly lockName: string };
  /**
   * The WAL archive: the segments it holds complete, and a feed of it into a
   * replica's own relevo_wal/ (see WalFeeder), which its restore_command reads.
   */
  readonly archive: {
    readonly segments: () => Promise<ReadonlySet<number>>;
    /**
     * `from`: the replica's replay position (null: unknown), where it reads
     * the archive from: what the feeder lists and prefetches starts there,
     * not at the archive's first segment (its `expected` list would grow
     * with the archive, and be rewritten and grep'd all along).
     */
    readonly feed: (node: NodeRef, from: { readonly timeline: number; readonly lsn: string } | null) => Promise<{ close(): Promise<void> }>;
  };
}

/**
 * The failover monitor's repair of replicas whose slot on the primary was
 * lost (see lost-slot-rules.ts for what PostgreSQL does then, and the
 * decision): a replica the archive can carry is given it as its
 * restore_command; one it cannot is seeded again, as a journaled operation.
 * Run by the monitor on a round where the primary answered, no operation is
 * in flight and no maintenance holds automatic repairs back.
 */
export class LostSlotRepair {
  /** Each replica bridged and its progress, until it streams again or is reseeded. */
  private readonly bridges = new Map<string, Bridge>();
  private readonly retryAfter = new Map<string, HoldOff>();
  /** The archive fed to each bridged replica, until it streams again or is reseeded. */
  private readonly feeds = new Map<string, { close(): Promise<void> }>();

  constructor(private readonly deps: LostSlotRepairDeps) {}

  /** Stops feeding every bridged replica (the monitor stops); a replica still lost is bridged again by the next monitor. */
  async close(): Promise<void> {
    for (const name of [...this.feeds.keys()]) await this.stopFeeding(name);
    this.bridges.clear();
  }

  private async stopFeeding(name: string): Promise<void> {
    const feed = this.feeds.get(name);
    this.feeds.delete(name);
    await feed
      ?.close()
      .catch((error: Error) =>
        this.deps.logger.warn({ node: name, err: error.message }, "the archive fed to a bridged replica did not stop cleanly"),
      );
  }

  async repair(state: ClusterState, guard: StateGuard): Promise<void> {
    const snapshot = this.deps.topology();
    // Only a snapshot taken since the record last changed: never act on a picture of the cluster from before a change of primary.
    if (!snapshot || Date.parse(snapshot.collectedAt) <= Date.parse(state.updatedAt)) return;
    const ended = bridgesEnded({
      bridged: this.bridges.keys(),
      members: this.deps.nodes.map((node) => node.name),
      snapshot,
      primary: state.primary,
      slotOf: (name) => slotNameFor(this.node(name)), // members only: bridgesEnded asks only of them
    });
    for (const name of ended) {
      this.bridges.delete(name);
      await this.stopFeeding(name);
    }
    for (const [name, bridge] of this.bridges) {
      const seen = snapshot.nodes.find((node) => node.name === name);
      this.bridges.set(name, bridgeSeen(bridge, seen?.replayedLsn ?? null, Date.parse(snapshot.collectedAt)));
    }
    const primary = snapshot.nodes.find((node) => node.name === state.primary);
    // Members only: a record naming a node no longer in the cluster must not stop every round's repair.
    const reseeding = (state.reseeding ?? []).filter((name) => this.deps.nodes.some((node) => node.name === name));
    // The archive is read only when a slot is lost, or a reseed left a node destroyed.
    if (!primary?.slots.some((slot) => slot.walStatus === "lost") && reseeding.length === 0) return;
    const repairs = lostSlotRepairs({
      snapshot,
      recordedPrimary: state.primary,
      fenced: state.fenced,
      slotOf: (name) => slotNameFor(this.node(name)),
      archiveSlot: ARCHIVE_SLOT,
      archivedSegments: await this.deps.archive.segments(),
      reseeding,
      bridges: this.bridges,
      now: monotonicNowMs(),
    });
    for (const repair of repairs) {
      const seen = snapshot.nodes.find((node) => node.name === repair.node);
      if (repair.action === "bridge") await this.bridge(repair, state.primary, seen?.replayedLsn ?? null, seen?.timeline ?? null);
      else if (repair.action === "unrecord") await this.unrecord(repair, state, guard);
      else if (await this.reseed(repair, state.primary, guard, { again: reseeding.includes(repair.node) })) return; // one at a time
    }
  }

  private node(name: string): NodeRef {
    const node = this.deps.nodes.find((member) => member.name === name);
    if (!node) throw new Error(`${name} is in the topology but not a member`);
    return node;
  }

  /**
   * restore_command is reloadable (PostgreSQL 15): the replica's startup
   * process, failing to stream, reads the archive next (fed into its own
   * relevo_wal/ from here, the script there written before the setting
   * names it), replays it, and streams from where it ends over the same
   * slot (which is reserved again once streamed from). Kept afterwards: the
   * archive may carry it again.
   * Recorded as bridged (its progress judged from then on) only once the
   * reload returned: a replica that did not take the setting is bridged
   * again next round, not reseeded for failing to replay an archive it was
   * never given.
   */
  private async bridge(repair: ReplicaRepair, primary: string, replayedLsn: string | null, timeline: number | null): Promise<void> {
    const node = this.node(repair.node);
    const from = replayedLsn === null ? null : { timeline: timeline ?? 1, lsn: replayedLsn };
    if (!this.feeds.has(node.name)) this.feeds.set(node.name, await this.deps.archive.feed(node, from));
    try {
      await withNodeClient(node, this.deps.superuser, this.deps.nodeTimeoutMs, async (client) => {
        await client.query(`ALTER SYSTEM SET restore_command = ${client.escapeLiteral(nodeRestoreCommand("standby"))}`);
        await client.query("SELECT pg_reload_conf()");
      });
    } catch (error) {
      await this.stopFeeding(node.name);
      throw error;
    }
    this.bridges.set(node.name, bridgeBegun(replayedLsn, monotonicNowMs()));
    await this.slotLost(repair, primary);
    this.deps.logger.warn({ node: node.name, slot: repair.slot }, "slot lost: the replica catches up from the archive");
  }

  /**
   * Drops a member made again some other way from the record of those a
   * reseed left destroyed. Written under the monitor's lease, refused if an
   * operation took the state or the primary changed since the round read it.
   */
  private async unrecord(repair: SlotRepair, state: ClusterState, guard: StateGuard): Promise<void> {
    const conditions = { unlessKey: this.deps.journal.lockName, epoch: state.epoch };
    await this.deps.store.update(
      guard,
      (current) => {
        const base = current ?? state;
        return { ...base, reseeding: without(base.reseeding ?? [], repair.node) };
      },
      conditions,
    );
    this.retryAfter.delete(repair.node);
    this.deps.logger.info({ node: repair.node, reason: repair.reason }, "recorded as destroyed, but streams: no longer to be seeded again");
  }

  /**
   * Starts the reseed (detached, as the monitor's operations are); false while
   * one failed recently. `again`: a node an earlier reseed left destroyed,
   * whose slot-lost event was sent then.
   */
  private async reseed(repair: ReplicaRepair, primary: string, guard: StateGuard, options: { again: boolean }): Promise<boolean> {
    const key = repair.node;
    if (coolDown(this.retryAfter.get(key), monotonicNowMs()) !== "clear") return false;
    this.retryAfter.set(key, holdOffAfter(null, monotonicNowMs()));
    this.bridges.delete(repair.node);
    await this.stopFeeding(repair.node);
    if (options.again) this.deps.logger.warn({ node: repair.node }, "a reseed left this replica destroyed: seeding it again");
    else await this.slotLost(repair, primary);
    void this.deps.operations.reseed(repair.node, { reason: repair.reason, lease: guard }).then(
      // Held off only after a failure: a reseed that worked is no reason to wait before the node's next one.
      () => this.retryAfter.delete(key),
      (error: Error) => {
        this.retryAfter.set(key, holdOffAfter(error, monotonicNowMs()));
        this.deps.logger.error({ node: repair.node, err: error.message }, "reseed of a replica whose slot was lost failed");
      },
    );
    return true;
  }

  private async slotLost(repair: ReplicaRepair, primary: string): Promise<void> {
    await this.deps.events.emit({
      kind: "replication:slot-lost",
      severity: "critical",
      node: repair.node,
      message: `${repair.node} cannot stream: ${repair.reason}; ${repair.action === "bridge" ? "it catches up from the archive" : "seeding it again"}`,
      data: { slot: repair.slot, upstream: primary, action: repair.action, reason: repair.reason },
    });
  }
}
