import type Redis from "ioredis";
import type { Credentials } from "../postgres/connection";
import { type ClusterSnapshot } from "../cluster/topology";
import type { RelevoConfig } from "../config/config";
import type { EventLog } from "../events/event-log";
import type { Logger } from "../log";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import { withNodeClient } from "../postgres/connection";
import { confirmReloadByCheckpoint } from "../postgres/checkpoint-after-reload";
import { ClusterStateStore, initialState, withName, type ClusterState, type StateGuard } from "./cluster-state";
import { fenceNode } from "./fencing";
import type { OperationJournal } from "./operation-journal";
import type { FailoverOperations } from "./operations";
import { recordPrimaryLsn } from "./primary-lsn";
import { PrimaryChecker, type PrimaryCheck } from "./primary-check";
import { membersConfirmLoss } from "./loss-confirmation";
import {
  afterMissedCheck,
  coolDown,
  desiredSynchronousSet,
  holdOffAfter,
  preferredInSync,
  primaryToAdopt,
  type HoldOff,
} from "./monitor-rules";
import { CommitWaitConfirmation, pollJoiningStandbys } from "./sync-join";
import { LostSlotRepair, type LostSlotRepairDeps } from "./lost-slot-repair";
import { setSynchronousStandbys, synchronousStandbyNames } from "../postgres/replication-config";
import { monotonicNowMs } from "../util/monotonic-clock";

/** How many detection windows the members must show the same primary before a stale record is brought to it. */
const ADOPT_AFTER_WINDOWS = 2;
/** The CHECKPOINT that confirms commits wait (see CommitWaitConfirmation) may write all of a busy primary's dirty buffers. */
const CONFIRMING_CHECKPOINT_TIMEOUT_MS = 5 * 60 * 1000;

export type MonitorConfig = Pick<
  RelevoConfig,
  | "clusterName"
  | "synchronous"
  | "failoverCheckIntervalMs"
  | "failoverFailureThreshold"
  | "failoverMaximumLagBytes"
  | "preferredPrimary"
  | "autoFailback"
  | "autoFailbackAfterMs"
  | "autoRejoin"
  | "nodeTimeoutMs"
  | "commitWaitCheckpointIntervalMs"
>;

export interface FailoverMonitorDeps {
  readonly config: MonitorConfig;
  readonly nodes: readonly NodeRef[];
  readonly driver: NodeDriver;
  readonly superuser: Credentials;
  readonly redis: Redis;
  readonly maintenanceKey: string;
  /** Where the last LSN seen on the primary is kept (the loss bound of an asynchronous failover, from any instance). */
  readonly primaryLsnKey: string;
  /** Where the reason a failover is held back is kept while it holds (read into the cluster's health). */
  readonly heldBackKey: string;
  readonly store: ClusterStateStore;
  readonly journal: OperationJournal;
  readonly operations: FailoverOperations;
  readonly events: EventLog;
  readonly logger: Logger;
  readonly topology: () => ClusterSnapshot | null;
  /** The monitor's lease, for guarded writes of the cluster state. */
  readonly guard: () => StateGuard | null;
  /** The WAL archive, which may carry a replica whose slot was lost (see LostSlotRepair). */
  readonly archive: LostSlotRepairDeps["archive"];
}

/**
 * Watches the primary from the one instance holding the failover lease:
 * counts failed checks, confirms a failure with the replicas (a blip between
 * Relevo and the primary alone is not a failure), keeps the synchronous
 * standby set to the replicas that are streaming (so a dead replica does not
 * stall commits, and one that left is not promoted until it caught up again),
 * fences any second writable node, rejoins fenced nodes, repairs replicas
 * whose slot was lost (LostSlotRepair) and fails back when told to. Operations run detached: checks go on meanwhile.
 */
export class FailoverMonitor {
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  private ticking: Promise<void> = Promise.resolve();
  private failures = 0;
  private readonly checker: PrimaryChecker;
  private readonly lostSlots: LostSlotRepair;
  private readonly retryAfter = new Map<string, HoldOff>();
  private preferredInSyncSince: number | null = null;
  /** The reason reported last for holding a failover back (an event when it changes, not every round). */
  private heldBackReason: string | null = null;
  /** The primary the members have shown since `since`, while the record is stale (see primaryToAdopt). */
  private adoptable: { node: string; since: number } | null = null;
  /** Whether the primary's commits are known to wait for the synchronous set (see CommitWaitConfirmation). */
  private readonly commitWait: CommitWaitConfirmation;

  constructor(private readonly deps: FailoverMonitorDeps) {
    this.checker = new PrimaryChecker({
      credentials: deps.superuser,
      timeoutMs: deps.config.failoverCheckIntervalMs,
      clusterName: deps.config.clusterName,
    });
    this.commitWait = new CommitWaitConfirmation(
      (primary, { signal, ...confirmation }) =>
        // A checkpoint on a busy primary may take minutes; its own connection, not the round's, ended on stop.
        withNodeClient(primary, deps.superuser, CONFIRMING_CHECKPOINT_TIMEOUT_MS, async (client) => {
          const end = (): void => void client.connection?.stream?.destroy();
          if (signal.aborted) throw new Error("the monitor stopped");
          signal.addEventListener("abort", end, { once: true });
          try {
            return await confirmReloadByCheckpoint(client, confirmation);
          } finally {
            signal.removeEventListener("abort", end);
          }
        }),
      { checkpointIntervalMs: deps.config.commitWaitCheckpointIntervalMs },
    );
    this.lostSlots = new LostSlotRepair({ ...deps, nodeTimeoutMs: deps.config.nodeTimeoutMs });
  }

  /**
   * Consecutive checks of the recorded primary that failed (0 once one
   * answers): how far the monitor is into judging it lost, whatever then
   * holds a failover back.
   */
  get missedChecks(): number {
    return this.failures;
  }

  get detectionWindowMs(): number {
    return this.deps.config.failoverCheckIntervalMs * this.deps.config.failoverFailureThreshold;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.failures = 0;
    const loop = (): void => {
      if (!this.running) return;
      const started = monotonicNowMs();
      this.ticking = this.tick()
        .catch((error: Error) => this.deps.logger.warn({ err: error.message }, "failover monitor check failed"))
        .finally(() => {
          if (this.running)
            this.timer = setTimeout(loop, Math.max(0, this.deps.config.failoverCheckIntervalMs - (monotonicNowMs() - started)));
        });
    };
    loop();
  }

  async stop(): Promise<void> {
    this.running = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.ticking;
    await this.commitWait.settled(5000);
    this.checker.close();
    await this.lostSlots.close();
  }

  private async tick(): Promise<void> {
    const started = monotonicNowMs();
    const guard = this.deps.guard();
    if (!guard) return;
    // Never adopt an operation this instance still runs (its own lock may have lapsed during a stall).
    if (this.deps.operations.busy) {
      this.failures = 0;
      return;
    }
    const adopted = await this.deps.journal.adoptAbandoned();
    if (adopted) {
      void this.deps.operations.resume(adopted);
      return;
    }
    let state = await this.deps.store.read();
    if (!state) {
      const primary = this.deps.topology()?.primary;
      if (!primary) return;
      state = await this.deps.store.update(guard, (current) => current ?? initialState(primary), { unlessKey: this.deps.journal.lockName });
    }
    const primary = this.deps.nodes.find((node) => node.name === state.primary);
    if (!primary) return;
    if ((await this.deps.journal.current()) !== null) {
      // An operation is changing the primary: its checks are its own.
      this.failures = 0;
      return;
    }
    const check = await this.checker.check(primary);
    const maintenance = (await this.deps.redis.get(this.deps.maintenanceKey)) === "1";
    if (check.ok) {
      this.adoptable = null;
      if (this.failures > 0) this.deps.logger.info({ node: primary.name, failures: this.failures }, "primary answers again");
      this.failures = 0;
      await this.heldBack(primary, null);
      await recordPrimaryLsn(this.deps.redis, this.deps.primaryLsnKey, primary.name, check.lsn);
      await this.keepSynchronousSet(state, primary, check, guard, started + this.deps.config.failoverCheckIntervalMs);
      await this.fenceSecondPrimaries(state, guard);
      if (!maintenance) await this.rejoinFenced(state);
      if (!maintenance) await this.lostSlots.repair(state, guard);
      if (!maintenance) await this.failBackWhenDue(state, check);
      return;
    }
    this.failures += 1;
    this.deps.logger.warn({ node: primary.name, failures: this.failures, err: check.error }, "primary check failed");
    if (!afterMissedCheck({ failures: this.failures, threshold: this.deps.config.failoverFailureThreshold, maintenance }).go) return;
    if (!(await this.replicasLostPrimary(state, primary))) return;
    if (await this.coolingDown(`failover:${primary.name}`)) return;
    const reason = `missed ${this.failures} checks (${check.error}) and no replica streams from it`;
    this.failures = 0;
    void this.deps.operations.failover({ trigger: "automatic", reason, lease: guard }).catch((error: Error) => {
      this.holdOff(`failover:${primary.name}`, error);
      this.deps.logger.error({ err: error.message }, "automatic failover did not happen");
    });
  }

  /**
   * The other members agree the primary is gone (see replicasConfirmLoss):
   * every member is asked, fenced ones too, since the recorded state may be
   * the stale one. A contradiction is reported in health and events.
   */
  private async replicasLostPrimary(state: ClusterState, primary: NodeRef): Promise<boolean> {
    const verdict = await membersConfirmLoss({
      primary,
      nodes: this.deps.nodes,
      fenced: state.fenced,
      superuser: this.deps.superuser,
      clusterName: this.deps.config.clusterName,
      liveWithinMs: this.detectionWindowMs,
      timeoutMs: this.deps.config.failoverCheckIntervalMs,
    });
    if (!verdict.go) this.deps.logger.warn({ node: primary.name }, verdict.reason);
    await this.heldBack(primary, verdict.go || !verdict.stale ? null : verdict.reason);
    const adopt =
      !verdict.go && verdict.stale
        ? primaryToAdopt({ recorded: primary, members: verdict.members, liveWithinMs: this.detectionWindowMs })
        : null;
    // Adopted only once the members have shown the same primary for two
    // detection windows: never on a passing picture, and the reason stays in
    // health meanwhile for an operator to see.
    if (adopt === null || this.adoptable?.node !== adopt.name) {
      this.adoptable = adopt ? { node: adopt.name, since: monotonicNowMs() } : null;
    } else if (monotonicNowMs() - this.adoptable.since >= ADOPT_AFTER_WINDOWS * this.detectionWindowMs) {
      this.adoptable = null;
      await this.adoptPrimary(state, primary, adopt, verdict.go ? "" : verdict.reason);
    }
    return verdict.go;
  }

  /**
   * The record brought to the primary the members run on (see
   * primaryToAdopt): it becomes the recorded primary, the one recorded
   * before is fenced (its data may hold commits of a branch the cluster left;
   * rejoined, it is rewound onto the adopted primary's history), and the
   * synchronous and eligible sets start empty — nothing is known of what the
   * standbys hold of the adopted primary until they join again. Refused
   * (nothing written) if an operation began or the record changed since it
   * was read.
   */
  private async adoptPrimary(state: ClusterState, recorded: NodeRef, adopted: NodeRef, why: string): Promise<void> {
    const guard = this.deps.guard();
    if (!guard) return;
    await this.deps.store.update(
      guard,
      (current) => {
        const base = current ?? state;
        return {
          ...base,
          primary: adopted.name,
          epoch: base.epoch + 1,
          syncSet: [],
          eligible: [],
          joining: {},
          fenced: withName(
            base.fenced.filter((name) => name !== adopted.name),
            recorded.name,
          ),
        };
      },
      { unlessKey: this.deps.journal.lockName, epoch: state.epoch },
    );
    this.failures = 0;
    await this.heldBack(recorded, null);
    this.deps.logger.warn(
      { recorded: recorded.name, adopted: adopted.name },
      "recorded state stale: the primary the members follow adopted",
    );
    await this.deps.events.emit({
      kind: "cluster:primary-adopted",
      severity: "critical",
      node: adopted.name,
      message: `the recorded state named ${recorded.name} the primary, but ${adopted.name} is the one the members follow (${why}): ${adopted.name} recorded as the primary, ${recorded.name} fenced`,
      data: { adopted: adopted.name, recordedPrimary: recorded.name, reason: why },
    });
  }

  /**
   * Reports (or clears, `reason` null) why a failover of a lost primary is
   * held back: kept in Redis for the cluster's health, expiring unless the
   * monitor keeps seeing it, and an event when the reason changes.
   */
  private async heldBack(primary: NodeRef, reason: string | null): Promise<void> {
    const expiresMs = Math.max(5000, 3 * this.detectionWindowMs);
    if (reason === null) {
      if (this.heldBackReason !== null) await this.deps.redis.del(this.deps.heldBackKey);
      this.heldBackReason = null;
      return;
    }
    await this.deps.redis.set(
      this.deps.heldBackKey,
      JSON.stringify({ reason, primary: primary.name, at: new Date().toISOString() }),
      "PX",
      expiresMs,
    );
    if (reason === this.heldBackReason) return;
    this.heldBackReason = reason;
    await this.deps.events.emit({
      kind: "cluster:failover-held-back",
      severity: "critical",
      node: primary.name,
      message: `failover of ${primary.name} held back: ${reason}`,
      data: { reason, recordedPrimary: primary.name },
    });
  }

  /**
   * Synchronous mode: every commit waits for all standbys of the set. A
   * standby that stopped streaming leaves the set (first its eligibility, in
   * the recorded state, then the primary's setting, so no commit is ever
   * acknowledged without it while it still counts as eligible). A streaming
   * standby close enough joins it: the primary's setting first; then,
   * polling the primary every JOIN_POLL_MS until the next check, once the
   * primary reports it as a synchronous standby (the setting is in force),
   * the primary's LSN read after that report is its join point; it becomes
   * eligible at the first poll where it has flushed that far, holding every
   * commit acknowledged before and waiting for it since (see sync-join.ts).
   * Asynchronous mode: no set.
   * Every write is refused if an operation began or the primary changed
   * since the check.
   */
  private async keepSynchronousSet(
    state: ClusterState,
    primary: NodeRef,
    check: Extract<PrimaryCheck, { ok: true }>,
    guard: StateGuard,
    roundEndsAt: number,
  ): Promise<void> {
    const conditions = { unlessKey: this.deps.journal.lockName, epoch: state.epoch };
    const known = new Set(this.deps.nodes.map((node) => node.name));
    const streaming = new Map(
      check.standbys.filter((s) => s.state === "streaming" && known.has(s.name) && !state.fenced.includes(s.name)).map((s) => [s.name, s]),
    );
    const desired = desiredSynchronousSet({
      synchronous: this.deps.config.synchronous,
      current: state.syncSet,
      streaming,
      primaryLsn: check.lsn,
    });
    const removed = state.syncSet.filter((name) => !desired.includes(name));
    const added = desired.filter((name) => !state.syncSet.includes(name));
    if (removed.length > 0) {
      state = await this.deps.store.update(
        guard,
        (current) => {
          const base = current ?? state;
          const joining = { ...base.joining };
          for (const name of removed) delete joining[name];
          return { ...base, eligible: base.eligible.filter((name) => !removed.includes(name)), joining };
        },
        conditions,
      );
    }
    const wanted = synchronousStandbyNames(desired);
    this.commitWait.observe(primary.name, check.synchronousStandbyNames);
    if (check.synchronousStandbyNames !== wanted) {
      await withNodeClient(primary, this.deps.superuser, this.deps.config.nodeTimeoutMs, (client) =>
        setSynchronousStandbys(client, desired),
      );
    }
    if (removed.length > 0 || added.length > 0) {
      state = await this.deps.store.update(guard, (current) => ({ ...(current ?? state), syncSet: desired }), conditions);
      await this.deps.events.emit({
        kind: "replication:sync-changed",
        severity: removed.length > 0 ? "warning" : "info",
        node: primary.name,
        message:
          desired.length === 0
            ? `commits no longer wait for a standby${removed.length > 0 ? ` (${removed.join(", ")} stopped streaming and may not be promoted until it caught up)` : ""}`
            : `commits wait for ${desired.join(", ")}${removed.length > 0 ? `; ${removed.join(", ")} left the set` : ""}`,
        data: { standbys: desired, added, removed },
      });
    }
    // Members the primary now waits for get their join point; joined ones that flushed past it become eligible.
    await pollJoiningStandbys(state, {
      primary,
      credentials: this.deps.superuser,
      timeoutMs: this.deps.config.nodeTimeoutMs,
      wanted,
      counts: (name) => known.has(name) && !state.fenced.includes(name),
      until: roundEndsAt,
      store: this.deps.store,
      guard,
      conditions,
      commitWait: this.commitWait,
    });
  }

  /** Any writable node other than the recorded primary is fenced at once. */
  private async fenceSecondPrimaries(state: ClusterState, guard: StateGuard): Promise<void> {
    const snapshot = this.deps.topology();
    if (!snapshot || Date.parse(snapshot.collectedAt) <= Date.parse(state.updatedAt)) return;
    const intruders = snapshot.nodes.filter(
      (node) => node.reachable && node.roleConfirmed && node.role === "primary" && node.name !== state.primary,
    );
    for (const intruder of intruders) {
      const node = this.deps.nodes.find((candidate) => candidate.name === intruder.name);
      if (!node) continue;
      // Checked again right before acting: still the lease holder, no operation begun, the same primary recorded.
      if ((await this.deps.redis.get(guard.key)) !== guard.value || (await this.deps.journal.current()) !== null) return;
      if ((await this.deps.store.read())?.primary !== state.primary) return;
      await this.deps.events.emit({
        kind: "cluster:split-brain",
        severity: "critical",
        node: node.name,
        message: `${node.name} accepts connections as a primary but ${state.primary} is the recorded primary: fencing ${node.name}`,
        data: { writable: [state.primary, node.name], recordedPrimary: state.primary },
      });
      const method = await fenceNode(this.deps.driver, node, "second primary (split brain)", this.deps.logger);
      await this.deps.store.update(
        guard,
        (current) => ({ ...(current ?? state), fenced: withName((current ?? state).fenced, node.name) }),
        {
          unlessKey: this.deps.journal.lockName,
          epoch: state.epoch,
        },
      );
      await this.deps.events.emit({
        kind: "node:fenced",
        severity: "critical",
        node: node.name,
        message: `${node.name} fenced (${method}): not the recorded primary`,
        data: { method, reason: "split brain" },
      });
    }
  }

  private async rejoinFenced(state: ClusterState): Promise<void> {
    if (!this.deps.config.autoRejoin) return;
    for (const name of state.fenced) {
      // A node a rejoin left destroyed is the lost-slot repair's to seed again (see destroyAndSeed).
      if (state.reseeding?.includes(name)) continue;
      if (await this.coolingDown(`rejoin:${name}`)) continue;
      const node = this.deps.nodes.find((candidate) => candidate.name === name);
      if (!node || (await this.deps.driver.state(node)).phase === "absent") continue;
      this.holdOff(`rejoin:${name}`, null);
      void this.deps.operations.rejoin(name, { trigger: "automatic", lease: this.deps.guard() }).catch((error: Error) => {
        this.holdOff(`rejoin:${name}`, error);
        this.deps.logger.error({ node: name, err: error.message }, "automatic rejoin failed");
      });
      return; // one operation at a time
    }
  }

  private async failBackWhenDue(state: ClusterState, check: Extract<PrimaryCheck, { ok: true }>): Promise<void> {
    const preferred = this.deps.config.preferredPrimary;
    if (!this.deps.config.autoFailback || state.primary === preferred) {
      this.preferredInSyncSince = null;
      return;
    }
    const inSync = preferredInSync({
      synchronous: this.deps.config.synchronous,
      preferred,
      eligible: state.eligible,
      standbys: check.standbys,
      primaryLsn: check.lsn,
      maximumLagBytes: this.deps.config.failoverMaximumLagBytes,
    });
    if (!inSync) {
      this.preferredInSyncSince = null;
      return;
    }
    this.preferredInSyncSince ??= monotonicNowMs();
    if (monotonicNowMs() - this.preferredInSyncSince < this.deps.config.autoFailbackAfterMs || (await this.coolingDown("failback"))) return;
    this.holdOff("failback", null);
    this.preferredInSyncSince = null;
    void this.deps.operations.failback({ trigger: "automatic", lease: this.deps.guard() }).catch((error: Error) => {
      this.holdOff("failback", error);
      this.deps.logger.error({ err: error.message }, "automatic failback did not happen");
    });
  }

  /** `error`: why the operation failed (null: it was just started, and is not started again meanwhile). */
  private holdOff(key: string, error: unknown): void {
    this.retryAfter.set(key, holdOffAfter(error, monotonicNowMs()));
  }

  private async coolingDown(key: string): Promise<boolean> {
    const cooling = coolDown(this.retryAfter.get(key), monotonicNowMs());
    if (cooling !== "ask-driver") return cooling === "cooling";
    // Bounded: an engine that hangs rather than refuses must not stall the monitor's round.
    let timer: NodeJS.Timeout | undefined;
    const answers = await Promise.race([
      this.deps.driver.checkPrerequisites().then(
        () => true,
        () => false,
      ),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), this.deps.config.failoverCheckIntervalMs))),
    ]).finally(() => clearTimeout(timer));
    if (answers) this.retryAfter.delete(key);
    return !answers;
  }
}
