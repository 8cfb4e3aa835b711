import { lsnToNumber, lsnBytes } from "../postgres/lsn";
import { randomUUID } from "node:crypto";
import type Redis from "ioredis";
import {
  seedReplica,
  waitForStreaming,
  writeManagedFiles,
  writeMarker,
  type BootstrapConfig,
  type BootstrapDeps,
} from "../cluster/bootstrap";
import { slotNameFor } from "../cluster/members";
import { withNodeClient, type Credentials } from "../postgres/connection";
import { FENCE_MARKER, ROLE_REWIND } from "../postgres/managed-settings";

import type { RelevoConfig } from "../config/config";
import { ErrorCode, RelevoError } from "../errors";
import type { EventLog } from "../events/event-log";
import type { EventKind, FailoverRecord } from "../events/event-map";
import type { Logger } from "../log";
import type { RedisKeys } from "../redis/keys";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import type { Secrets } from "../secrets/secrets-store";
import { settlesWithin, sleep } from "../util/sleep";
import type { Membership } from "../cluster/membership";
import { isPortFree } from "../util/ports";
import { ClusterStateStore, StaleWriterError, initialState, withName, without, type ClusterState, type StateGuard } from "./cluster-state";
import { fenceNode, markFenced } from "./fencing";
import { byMostAdvanced, readNodeFacts, streamsFrom, type NodeFacts } from "../postgres/node-facts";
import { operationInProgress, type JournalEntry, type OperationJournal, type RunningOperation } from "./operation-journal";
import {
  configureStoppedStandby,
  dropSlot,
  editStoppedNodeConf,
  ensureReservedSlot,
  FENCE_SETTING,
  repointRunningStandby,
  setSynchronousStandbys,
  STANDBY_SIGNAL,
} from "../postgres/replication-config";

export type OperationsConfig = BootstrapConfig & Pick<RelevoConfig, "synchronous" | "failoverMaximumLagBytes" | "preferredPrimary">;

export interface FailoverOperationsDeps {
  readonly config: OperationsConfig;
  /** The members, changed in place by addReplica / removeReplica. */
  readonly membership: Membership;
  readonly driver: NodeDriver;
  readonly secrets: Secrets;
  readonly superuser: Credentials;
  readonly redis: Redis;
  readonly keys: Pick<RedisKeys, "primaryLsn" | "leases">;
  readonly store: ClusterStateStore;
  readonly journal: OperationJournal;
  readonly events: EventLog;
  readonly logger: Logger;
  /** Everything bootstrap needs to seed a replica again (rejoin's fallback). */
  readonly bootstrap: BootstrapDeps;
  /** Polls the topology now (after a change of primary, so readers see it at once). */
  readonly refreshTopology: () => Promise<unknown>;
}

export interface FailoverRequest {
  readonly to?: string | null;
  readonly force?: boolean;
  readonly trigger: "automatic" | "manual";
  readonly reason: string;
  /** The monitor's lease (automatic failover): refused if it is no longer held. */
  readonly lease?: StateGuard | null;
}

export type RejoinMethod = "rewind" | "reseed" | "restart";

/** A replica promoted only when it is at most this far behind (switchover, failback). */
const SWITCHOVER_MAX_LAG_BYTES = 16 * 1024 * 1024;
/** How long a restarted standby has to stream before it is rewound instead. */
const RESTART_STREAMING_TIMEOUT_MS = 30000;
/** How long a switchover waits for the target to receive the old primary's last record. */
const CATCH_UP_TIMEOUT_MS = 30000;

/**
 * Failover, switchover, failback and rejoin: each journaled (one at a time
 * across instances, resumable by another), each step idempotent, every stage
 * an event. PostgreSQL says who is writable; the cluster state says who may be.
 */
export class FailoverOperations {
  private inFlight = 0;
  private readonly running = new Set<Promise<unknown>>();

  constructor(private readonly deps: FailoverOperationsDeps) {}

  /** An operation runs in this instance. */
  get busy(): boolean {
    return this.inFlight > 0;
  }

  node(name: string): NodeRef {
    const node = this.deps.membership.nodes.find((candidate) => candidate.name === name);
    if (!node) {
      throw new RelevoError(
        ErrorCode.NotFound,
        `no node named "${name}"; nodes are ${this.deps.membership.nodes.map((n) => n.name).join(", ")}`,
      );
    }
    return node;
  }

  /** The recorded state; made from the observed primary when none is recorded yet. */
  async state(): Promise<ClusterState> {
    const state = await this.deps.store.read();
    if (state) return state;
    const writable = await this.writableNodes();
    if (writable.length !== 1) {
      throw new RelevoError(
        ErrorCode.PreconditionFailed,
        `no primary is recorded and ${writable.length} nodes accept writes; cannot tell which is the primary`,
      );
    }
    return this.deps.store.update(null, (current) => current ?? initialState(writable[0]!.node.name));
  }

  // ---- failover ------------------------------------------------------------

  /** Fences the primary and promotes the most advanced eligible replica (or `to`). */
  async failover(request: FailoverRequest): Promise<FailoverRecord> {
    await this.refuseWhileBusy();
    const state = await this.state();
    const from = this.node(state.primary);
    if (request.to) this.node(request.to);
    if (request.to === from.name) throw new RelevoError(ErrorCode.PreconditionFailed, `${from.name} is already the primary`);
    if (request.trigger === "manual" && !request.force) {
      const facts = await readNodeFacts(from, this.deps.superuser, 2000);
      if (facts && !facts.inRecovery) {
        throw new RelevoError(
          ErrorCode.PreconditionFailed,
          `the primary ${from.name} is healthy: use switchover (no data loss), or failover with force to fence it anyway`,
        );
      }
    }
    // The old primary's last LSN seen (by the monitor, or at its promotion): the loss bound of an asynchronous failover.
    const lastPrimaryLsn = await this.lastSeenLsn(from);
    const operation = await this.deps.journal.begin(
      this.newEntry("failover", request.trigger, from.name, request.to ?? null, request.force ?? false, request.reason, { lastPrimaryLsn }),
      request.lease ?? null,
    );
    return this.tracked(operation, () => this.runFailover(operation));
  }

  /** Runs (or resumes) a failover from its journal. */
  private async runFailover(operation: RunningOperation): Promise<FailoverRecord> {
    const entry = operation.entry;
    try {
      const from = this.node(entry.from);
      if (!entry.times.detected) {
        await operation.record({ stage: "detected" }, "detected");
        await this.emitStage("failover:detected", operation, "warning", `${entry.trigger} failover: primary ${from.name} ${entry.reason}`);
      }
      if (!operation.entry.times.fenced) {
        // Nobody to promote: leave the old primary alone (it may come back) rather than fence it for nothing.
        await this.chooseCandidate(operation.entry);
        operation.assertHeld();
        const method = await fenceNode(this.deps.driver, from, `failover ${entry.id}`, this.deps.logger);
        await this.deps.store.update(operation.guard, (state) => ({
          ...(state ?? initialState(from.name)),
          fenced: withName(state?.fenced ?? [], from.name),
        }));
        await operation.record({ stage: "fenced", facts: { fenceMethod: method } }, "fenced");
        await this.deps.events.emit({
          kind: "node:fenced",
          severity: "critical",
          node: from.name,
          message: `${from.name} fenced (${method})`,
          data: { method, reason: `failover ${entry.id}` },
        });
        await this.emitStage("failover:fenced", operation, "critical", `old primary ${from.name} fenced (${method})`);
      }
      let target: NodeRef;
      if (!operation.entry.times.promoted) {
        const choice =
          operation.entry.to && operation.entry.times.promoting
            ? { node: this.node(operation.entry.to), lostBytes: null }
            : await this.chooseCandidate(operation.entry);
        target = choice.node;
        if (!operation.entry.times.promoting) {
          await operation.record({ stage: "promoting", to: target.name, facts: { lostBytes: choice.lostBytes } }, "promoting");
          await this.emitStage("failover:promoting", operation, "warning", `promoting ${target.name}`);
        }
        await this.promote(target, operation);
        await operation.record({ stage: "promoted" }, "promoted");
        await this.emitStage("failover:promoted", operation, "warning", `${target.name} promoted: it accepts writes`);
      } else {
        target = this.node(operation.entry.to!);
      }
      await this.followNewPrimary(target, [from.name]);
      await operation.record({ stage: "completed" }, "completed");
      const record = this.recordOf(operation.entry, "completed", null);
      await this.deps.events.emit({
        kind: "failover:completed",
        severity: "warning",
        node: target.name,
        message: `failover from ${from.name} to ${target.name} completed in ${record.durationMs} ms`,
        data: record,
      });
      await operation.finish();
      await this.deps.refreshTopology().catch(() => undefined);
      return record;
    } catch (error) {
      return this.failed(operation, error, operation.entry.times.promoting !== undefined);
    }
  }

  /** The replica to promote: reachable, eligible (unless forced), the most advanced. */
  private async chooseCandidate(entry: JournalEntry): Promise<{ node: NodeRef; lostBytes: number | null }> {
    const state = await this.state();
    const replicas = this.deps.membership.nodes.filter((node) => node.name !== entry.from && !state.fenced.includes(node.name));
    const facts = (
      await Promise.all(replicas.map((node) => readNodeFacts(node, this.deps.superuser, this.deps.config.nodeTimeoutMs)))
    ).filter((fact): fact is NodeFacts => fact !== null && fact.inRecovery);
    if (facts.length === 0) throw new RelevoError(ErrorCode.NoEligibleReplica, "no replica answers: nothing can be promoted");
    const lastPrimary = lsnBytes(typeof entry.facts.lastPrimaryLsn === "string" ? entry.facts.lastPrimaryLsn : null);
    const lostBytes = (fact: NodeFacts): number | null =>
      lastPrimary === null || fact.lsn === null ? null : Math.max(0, lastPrimary - lsnToNumber(fact.lsn));
    const eligible = (fact: NodeFacts): string | null => {
      if (entry.force) return null;
      if (this.deps.config.synchronous) {
        return state.eligible.includes(fact.node.name)
          ? null
          : `${fact.node.name} is not known to hold every acknowledged commit (not an in-sync standby)`;
      }
      const lost = lostBytes(fact);
      if (lost === null) return `${fact.node.name}'s lag behind the old primary is unknown`;
      return lost <= this.deps.config.failoverMaximumLagBytes
        ? null
        : `${fact.node.name} was ${lost} bytes behind (limit ${this.deps.config.failoverMaximumLagBytes})`;
    };
    if (entry.to) {
      const fact = facts.find((candidate) => candidate.node.name === entry.to);
      if (!fact) throw new RelevoError(ErrorCode.NoEligibleReplica, `${entry.to} does not answer as a replica`);
      const why = eligible(fact);
      if (why) throw new RelevoError(ErrorCode.NoEligibleReplica, `${why}; failover with force to promote it anyway`);
      return { node: fact.node, lostBytes: lostBytes(fact) };
    }
    const ranked = [...facts].sort(byMostAdvanced(this.deps.config.preferredPrimary));
    const reasons: string[] = [];
    for (const fact of ranked) {
      const why = eligible(fact);
      if (!why) return { node: fact.node, lostBytes: lostBytes(fact) };
      reasons.push(why);
    }
    throw new RelevoError(ErrorCode.NoEligibleReplica, `no eligible replica: ${reasons.join("; ")}`);
  }

  /**
   * Promotes `target` (idempotent: a node already out of recovery is not
   * promoted again), clears what it inherited of the old primary's
   * synchronous and standby settings, checks it accepts writes, and records it
   * as the primary.
   */
  private async promote(target: NodeRef, operation: RunningOperation): Promise<void> {
    const credentials = this.deps.superuser;
    operation.assertHeld();
    const before = await readNodeFacts(target, credentials, this.deps.config.nodeTimeoutMs);
    await withNodeClient(target, credentials, Math.max(this.deps.config.startTimeoutMs, 60000), async (client) => {
      const inRecovery = (await client.query<{ r: boolean }>("SELECT pg_is_in_recovery() AS r")).rows[0]!.r;
      if (inRecovery) {
        const promoted = (await client.query<{ ok: boolean }>("SELECT pg_promote(true, 60) AS ok")).rows[0]!.ok;
        if (!promoted) throw new RelevoError(ErrorCode.Timeout, `${target.name} did not finish promotion within 60 s`);
      }
      // Commits must not wait for standbys that follow nobody yet; the
      // monitor adds them back as they catch up.
      await setSynchronousStandbys(client, []);
      await client.query("ALTER SYSTEM RESET primary_conninfo");
      await client.query("ALTER SYSTEM RESET primary_slot_name");
      await client.query("ALTER SYSTEM RESET default_transaction_read_only");
      await client.query("SELECT pg_reload_conf()");
    });
    const facts = await readNodeFacts(target, credentials, this.deps.config.nodeTimeoutMs);
    if (!facts || facts.inRecovery || facts.readOnly)
      throw new RelevoError(ErrorCode.CommandFailed, `${target.name} does not accept writes after promotion`);
    // A promotion starts a new timeline; the same one means the node was already a primary of its own.
    if (before?.inRecovery && before.timeline !== null && facts.timeline !== null && facts.timeline <= before.timeline) {
      throw new RelevoError(ErrorCode.CommandFailed, `${target.name} is on timeline ${facts.timeline} after promotion, not on a new one`);
    }
    // The new primary's first known LSN: the loss bound should it die before the monitor's first check of it.
    if (facts.lsn) await recordPrimaryLsn(this.deps.redis, this.deps.keys.primaryLsn, target.name, facts.lsn);
    await this.deps.store.update(operation.guard, (state) => {
      const base = state ?? initialState(target.name);
      if (base.primary === target.name) return base;
      return {
        ...base,
        primary: target.name,
        epoch: base.epoch + 1,
        syncSet: [],
        eligible: [],
        joining: {},
        fenced: without(base.fenced, target.name),
      };
    });
  }

  /**
   * Every other node's slot on the new primary first (so none finds its WAL
   * gone, the old primary's included: it rejoins over it), then the running
   * replicas repointed; stopped ones are configured to follow it when started.
   */
  private async followNewPrimary(primary: NodeRef, skip: readonly string[]): Promise<void> {
    const others = this.deps.membership.nodes.filter((node) => node.name !== primary.name);
    await withNodeClient(primary, this.deps.superuser, this.deps.config.nodeTimeoutMs, async (client) => {
      for (const node of others) await ensureReservedSlot(client, slotNameFor(node));
    });
    const state = await this.state();
    for (const node of others) {
      if (skip.includes(node.name) || state.fenced.includes(node.name)) continue;
      try {
        const facts = await readNodeFacts(node, this.deps.superuser, this.deps.config.nodeTimeoutMs);
        if (facts?.inRecovery) {
          await withNodeClient(node, this.deps.superuser, this.deps.config.nodeTimeoutMs, (client) =>
            repointRunningStandby(client, node, primary, this.deps.secrets.replicationPassword),
          );
        } else if (facts === null && (await this.deps.driver.state(node)).phase === "stopped") {
          await configureStoppedStandby(this.deps.driver, node, primary, this.deps.secrets.replicationPassword);
        }
      } catch (error) {
        this.deps.logger.warn({ node: node.name, err: (error as Error).message }, "replica not repointed; it rejoins later");
      }
    }
  }

  // ---- switchover and failback ----------------------------------------------

  /** Planned change of primary, losing nothing: clean stop, catch-up confirmed, promotion, old primary restarted as a standby. */
  async switchover(
    to: string,
    kind: "switchover" | "failback" = "switchover",
    trigger: "automatic" | "manual" = "manual",
    lease: StateGuard | null = null,
  ): Promise<FailoverRecord> {
    await this.refuseWhileBusy();
    const state = await this.state();
    const target = this.node(to);
    const from = this.node(state.primary);
    if (target.name === from.name) throw new RelevoError(ErrorCode.PreconditionFailed, `${target.name} is already the primary`);
    if (await this.deps.redis.exists(this.deps.keys.leases.backup)) {
      throw new RelevoError(ErrorCode.BackupInProgress, `a backup is running; wait for it to finish before a ${kind}`);
    }
    const [primaryFacts, targetFacts] = await Promise.all([
      readNodeFacts(from, this.deps.superuser, this.deps.config.nodeTimeoutMs),
      readNodeFacts(target, this.deps.superuser, this.deps.config.nodeTimeoutMs),
    ]);
    if (!primaryFacts || primaryFacts.inRecovery) {
      throw new RelevoError(ErrorCode.PreconditionFailed, `the primary ${from.name} does not answer as a primary: use failover`);
    }
    if (!streamsFrom(targetFacts, from)) {
      throw new RelevoError(ErrorCode.PreconditionFailed, `${target.name} is not a replica streaming from ${from.name}; rejoin it first`);
    }
    const lag = lsnToNumber(primaryFacts.lsn!) - lsnToNumber(targetFacts!.lsn ?? "0/0");
    if (lag > SWITCHOVER_MAX_LAG_BYTES) {
      throw new RelevoError(
        ErrorCode.PreconditionFailed,
        `${target.name} is ${lag} bytes behind (at most ${SWITCHOVER_MAX_LAG_BYTES} for a ${kind}); retry once it has caught up`,
      );
    }
    const operation = await this.deps.journal.begin(
      this.newEntry(kind, trigger, from.name, target.name, false, `${kind} requested`, {}),
      lease,
    );
    return this.tracked(operation, () => this.runSwitchover(operation));
  }

  async failback(trigger: "automatic" | "manual" = "manual", lease: StateGuard | null = null): Promise<FailoverRecord> {
    return this.switchover(this.deps.config.preferredPrimary, "failback", trigger, lease);
  }

  private async runSwitchover(operation: RunningOperation): Promise<FailoverRecord> {
    const entry = operation.entry;
    try {
      const from = this.node(entry.from);
      const target = this.node(entry.to!);
      const kind = entry.kind as "switchover" | "failback";
      if (!entry.times.stopped) await this.emitStage("failover:detected", operation, "info", `${kind}: ${from.name} → ${target.name}`);
      if (!operation.entry.times.promoted) {
        // Stopped again when resumed (idempotent): whatever happened since, it takes no write now.
        // A fast shutdown sends every WAL record, its shutdown checkpoint included, to connected standbys.
        operation.assertHeld();
        await this.deps.driver.stop(from, { mode: "fast", timeoutMs: 60000 });
        // Fenced while stopped: should the service die now, nothing starts it as a primary.
        await fenceNode(this.deps.driver, from, `${kind} ${entry.id}`, this.deps.logger);
        if (!operation.entry.times.stopped) await operation.record({ stage: "stopped" }, "stopped");
        const finalLsn = await this.lastCheckpoint(from);
        if (!operation.entry.times.fenced) {
          await operation.record({ stage: "caught-up", facts: { finalLsn } }, "fenced");
          await this.emitStage("failover:fenced", operation, "info", `${from.name} stopped cleanly at ${finalLsn}`);
        }
        const caughtUp = await this.waitForReceipt(target, finalLsn);
        if (!caughtUp) {
          // Nothing changed yet: the old primary goes back to work, the journal closed first.
          const why = `${target.name} did not receive ${from.name}'s last record (${finalLsn}) within ${CATCH_UP_TIMEOUT_MS} ms; ${from.name} restarted as the primary`;
          await this.unfence(from);
          const record = this.recordOf(operation.entry, "failed", why);
          await operation.finish();
          await this.deps.driver.start(from, { timeoutMs: this.deps.config.startTimeoutMs });
          await this.deps.events.emit({
            kind: "failover:failed",
            severity: "warning",
            node: from.name,
            message: `${kind} ${entry.id} abandoned: ${why}`,
            data: record,
          });
          throw new RelevoError(ErrorCode.PreconditionFailed, why);
        }
        if (!operation.entry.times.promoting) {
          await operation.record({ stage: "promoting", facts: { lostBytes: 0 } }, "promoting");
          await this.emitStage("failover:promoting", operation, "info", `promoting ${target.name}`);
        }
        await this.promote(target, operation);
        await operation.record({ stage: "promoted" }, "promoted");
        await this.emitStage("failover:promoted", operation, "info", `${target.name} promoted: it accepts writes`);
      }
      await this.followNewPrimary(target, [from.name]);
      // The old primary stopped cleanly at a point the new one has: it follows without a rewind.
      operation.assertHeld();
      const method = await this.restartAsStandby(from, target);
      await operation.record({ stage: "completed", facts: { oldPrimaryRejoin: method } }, "completed");
      const record = this.recordOf(operation.entry, "completed", null);
      await this.deps.events.emit({
        kind: "failover:completed",
        severity: "info",
        node: target.name,
        message: `${kind} from ${from.name} to ${target.name} completed in ${record.durationMs} ms`,
        data: record,
      });
      await operation.finish();
      await this.deps.refreshTopology().catch(() => undefined);
      return record;
    } catch (error) {
      if (operation.settled) throw error; // the clean abort above
      return this.failed(operation, error, operation.entry.times.stopped !== undefined);
    }
  }

  /** Takes a fence off a node that is to run again as it was (a switchover called off). */
  private async unfence(node: NodeRef): Promise<void> {
    await editStoppedNodeConf(this.deps.driver, node, { [FENCE_SETTING]: null });
    await this.deps.driver.removeFiles(node, [FENCE_MARKER]);
  }

  /** The stopped node's last checkpoint (its shutdown checkpoint after a clean stop). */
  private async lastCheckpoint(node: NodeRef): Promise<string> {
    const location = /Latest checkpoint location:\s+([0-9A-F]+\/[0-9A-F]+)/.exec(await this.controlData(node))?.[1];
    if (!location) throw new RelevoError(ErrorCode.CommandFailed, `pg_controldata of ${node.name} shows no checkpoint location`);
    return location;
  }

  private async waitForReceipt(node: NodeRef, lsn: string): Promise<boolean> {
    const deadline = Date.now() + CATCH_UP_TIMEOUT_MS;
    while (Date.now() < deadline) {
      const facts = await readNodeFacts(node, this.deps.superuser, this.deps.config.nodeTimeoutMs);
      // Past the checkpoint record's start: the record itself was received.
      if (facts?.lsn && lsnToNumber(facts.lsn) > lsnToNumber(lsn)) return true;
      await sleep(20);
    }
    return false;
  }

  /** A cleanly stopped old primary restarted as a standby of `primary`; rewound if it cannot follow as it is. */
  private async restartAsStandby(node: NodeRef, primary: NodeRef): Promise<RejoinMethod> {
    if (streamsFrom(await readNodeFacts(node, this.deps.superuser, this.deps.config.nodeTimeoutMs), primary)) return "restart";
    await this.stopQuietly(node);
    return this.restartElseRewind(node, primary, this.deps.config.startTimeoutMs);
  }

  // ---- rejoin ------------------------------------------------------------------

  /** Brings a fenced (or lost) node back as a replica of the primary: pg_rewind, else a fresh seed. */
  async rejoin(name: string, trigger: "automatic" | "manual" = "manual", lease: StateGuard | null = null): Promise<RejoinMethod> {
    await this.refuseWhileBusy();
    const node = this.node(name);
    const state = await this.state();
    if (state.primary === node.name)
      throw new RelevoError(ErrorCode.PreconditionFailed, `${node.name} is the primary; it cannot rejoin as a replica`);
    const operation = await this.deps.journal.begin(
      this.newEntry("rejoin", trigger, node.name, state.primary, false, `${trigger} rejoin`, {}),
      lease,
    );
    return this.tracked(operation, () => this.runRejoin(operation));
  }

  private async runRejoin(operation: RunningOperation): Promise<RejoinMethod> {
    const name = operation.entry.from;
    const started = Date.now();
    try {
      const node = this.node(name);
      const primary = this.node((await this.state()).primary);
      let method: RejoinMethod;
      if (streamsFrom(await readNodeFacts(node, this.deps.superuser, this.deps.config.nodeTimeoutMs), primary)) {
        method = "restart";
      } else {
        await operation.record({ stage: "stopping" });
        operation.assertHeld();
        await this.stopQuietly(node);
        await withNodeClient(primary, this.deps.superuser, this.deps.config.nodeTimeoutMs, (client) =>
          ensureReservedSlot(client, slotNameFor(node)),
        );
        await operation.record({ stage: "rejoining" });
        operation.assertHeld();
        method = await this.rejoinStopped(node, primary);
      }
      await this.deps.store.update(operation.guard, (state) => ({
        ...(state ?? initialState(primary.name)),
        fenced: without(state?.fenced ?? [], node.name),
      }));
      await operation.finish();
      await this.deps.events.emit({
        kind: "node:rejoined",
        severity: "info",
        node: node.name,
        message: `${node.name} rejoined as a replica of ${primary.name} (${method})`,
        data: { method, upstream: primary.name, durationMs: Date.now() - started },
      });
      await this.deps.refreshTopology().catch(() => undefined);
      return method;
    } catch (error) {
      if (error instanceof StaleWriterError) throw error;
      await operation.finish().catch(() => undefined);
      const message = (error as Error).message;
      await this.deps.events.emit({
        kind: "node:rejoin-failed",
        severity: "critical",
        node: name,
        message: `${name} did not rejoin: ${message}`,
        data: { error: message },
      });
      throw error;
    }
  }

  /**
   * A stopped node back as a standby. One that was a standby (its control
   * file says recovery) holds a prefix of the primary's history: it is
   * restarted as it is. Running pg_rewind on it instead would first run crash
   * recovery outside standby mode, which ends with a checkpoint of its own on
   * the primary's timeline that the primary never wrote ("no rewind
   * required", and a standby that cannot stream). One that was a primary
   * (the fenced old primary) is rewound. If the restart does not stream, the
   * node is stopped cleanly (shut down in recovery) and rewound.
   */
  private async rejoinStopped(node: NodeRef, primary: NodeRef): Promise<RejoinMethod> {
    if (!(await this.wasStandby(node))) return this.rewindOrReseed(node, primary);
    return this.restartElseRewind(node, primary, RESTART_STREAMING_TIMEOUT_MS);
  }

  /** A stopped node restarted as a standby of `primary`; rewound (else re-seeded) when it does not stream within `streamingTimeoutMs`. */
  private async restartElseRewind(node: NodeRef, primary: NodeRef, streamingTimeoutMs: number): Promise<RejoinMethod> {
    try {
      await this.startAsStandby(node, primary, streamingTimeoutMs);
      return "restart";
    } catch (error) {
      this.deps.logger.warn(
        { node: node.name, err: (error as Error).message },
        "node does not stream after a restart as a standby: rewinding it",
      );
      return this.rewindOrReseed(node, primary);
    }
  }

  /**
   * Starts a stopped node as a standby of `primary` over its slot: the slots
   * it had as a primary cleared, conninfo and standby.signal written, the
   * fence lifted (standby.signal keeps it from writing); waits until it streams.
   */
  private async startAsStandby(node: NodeRef, primary: NodeRef, streamingTimeoutMs: number): Promise<void> {
    await this.clearSlots(node);
    await configureStoppedStandby(this.deps.driver, node, primary, this.deps.secrets.replicationPassword);
    await this.deps.driver.removeFiles(node, [FENCE_MARKER]);
    await this.deps.driver.start(node, { timeoutMs: this.deps.config.startTimeoutMs });
    await waitForStreaming({ config: { ...this.deps.config, startTimeoutMs: streamingTimeoutMs }, secrets: this.deps.secrets }, node);
  }

  private async wasStandby(node: NodeRef): Promise<boolean> {
    return /Database cluster state:\s+(in archive recovery|shut down in recovery)/.test(await this.controlData(node, true));
  }

  /** pg_controldata's output for a stopped node (empty when `allowFailure` and it failed). */
  private async controlData(node: NodeRef, allowFailure = false): Promise<string> {
    return (
      await this.deps.driver.exec(node, ["pg_controldata", "-D", this.deps.driver.dataDirectory(node)], { mode: "offline", allowFailure })
    ).stdout;
  }

  /**
   * pg_rewind against the primary, then the node's own files written again
   * (pg_rewind copies the source's configuration, marker included) and the
   * node started as a standby over its slot. When pg_rewind fails, the node
   * is seeded again from scratch (repository or pg_basebackup).
   */
  private async rewindOrReseed(node: NodeRef, primary: NodeRef): Promise<RejoinMethod> {
    const { driver } = this.deps;
    await this.stopQuietly(node);
    // pg_rewind reads the source's timeline from its control file, which a
    // promotion updates only at the next checkpoint: without one, a freshly
    // promoted source looks like it is on the old timeline ("no rewind required").
    await withNodeClient(primary, this.deps.superuser, 5 * 60 * 1000, (client) => client.query("CHECKPOINT"));
    // pg_rewind's crash-recovery step refuses to run with a standby.signal.
    await driver.removeFiles(node, [STANDBY_SIGNAL, "recovery.signal"]);
    const rewind = await driver.exec(
      node,
      [
        "pg_rewind",
        "--target-pgdata",
        driver.dataDirectory(node),
        "--source-server",
        `host=${primary.host} port=${primary.port} user=${ROLE_REWIND} dbname=postgres connect_timeout=5`,
      ],
      { mode: "offline", env: { PGPASSWORD: this.deps.secrets.rewindPassword }, allowFailure: true, timeoutMs: 30 * 60 * 1000 },
    );
    const output = `${rewind.stdout}\n${rewind.stderr}`.trim().split("\n").slice(-6).join(" | ");
    if (rewind.exitCode !== 0) {
      this.deps.logger.warn({ node: node.name, exitCode: rewind.exitCode, output }, "pg_rewind failed: seeding the node again");
      await driver.destroy(node);
      await seedReplica(this.deps.bootstrap, node, primary);
      return "reseed";
    }
    this.deps.logger.info({ node: node.name, output }, "pg_rewind finished");
    // pg_rewind removed the fence with the rest of the node's own files: back at once, until the node starts as a standby.
    await markFenced(driver, node, "rejoining");
    await writeMarker(this.deps.bootstrap, node);
    await writeManagedFiles(this.deps.bootstrap, node);
    await this.startAsStandby(node, primary, this.deps.config.startTimeoutMs);
    return "rewind";
  }

  /** A standby must not keep the slots it had as a primary: they would hold WAL back on it for ever. */
  private async clearSlots(node: NodeRef): Promise<void> {
    const entries = await this.deps.driver.listFiles(node, "pg_replslot");
    const slots = entries.filter((entry) => entry.type === "directory" && !entry.path.slice("pg_replslot/".length).includes("/"));
    await this.deps.driver.removeFiles(
      node,
      slots.map((entry) => entry.path),
    );
  }

  private async stopQuietly(node: NodeRef): Promise<void> {
    const state = await this.deps.driver.state(node);
    if (state.phase === "paused") return this.deps.driver.kill(node);
    if (state.phase !== "running") return;
    try {
      await this.deps.driver.stop(node, { mode: "fast", timeoutMs: 15000 });
    } catch {
      await this.deps.driver.kill(node);
    }
  }

  // ---- replicas ----------------------------------------------------------------

  /** Seeds a new replica of the primary (from the repository when a backup exists, else pg_basebackup) and makes it a member. */
  async addReplica(name: string): Promise<NodeRef> {
    await this.refuseWhileBusy();
    const state = await this.state();
    const primary = this.node(state.primary);
    let port = this.deps.membership.nextPort();
    while (!(await isPortFree(primary.host, port))) port += 1;
    this.deps.membership.plan(name, port); // checks the name
    const operation = await this.deps.journal.begin(
      this.newEntry("add-replica", "manual", name, primary.name, false, "replica added by an operator", { port }),
    );
    return this.tracked(operation, () => this.runAddReplica(operation));
  }

  private async runAddReplica(operation: RunningOperation): Promise<NodeRef> {
    const entry = operation.entry;
    const primary = this.node((await this.state()).primary);
    const node: NodeRef = { name: entry.from, host: primary.host, port: Number(entry.facts.port) };
    // A seed cut short by a dead instance left half a node: start again from nothing.
    operation.assertHeld();
    if (!this.deps.membership.find(node.name)) await this.deps.driver.destroy(node);
    const outcome = await seedReplica(this.deps.bootstrap, node, primary);
    await this.deps.membership.add(node);
    await operation.finish();
    await this.deps.events.emit({
      kind: "node:created",
      severity: "info",
      node: node.name,
      message: `${node.name} added as a replica of ${primary.name} (seeded from ${outcome.phase === "seeded" ? outcome.from : "primary"}), port ${node.port}`,
      data: { role: "replica", upstream: primary.name },
    });
    await this.deps.refreshTopology().catch(() => undefined);
    return node;
  }

  /** Stops a replica, removes its data and its slot on the primary, and forgets it. */
  async removeReplica(name: string): Promise<void> {
    await this.refuseWhileBusy();
    const node = this.node(name);
    const state = await this.state();
    if (state.primary === node.name)
      throw new RelevoError(ErrorCode.PreconditionFailed, `${node.name} is the primary; switch over to another node before removing it`);
    const operation = await this.deps.journal.begin(
      this.newEntry("remove-replica", "manual", name, state.primary, false, "replica removed by an operator", {}),
    );
    await this.tracked(operation, () => this.runRemoveReplica(operation));
  }

  private async runRemoveReplica(operation: RunningOperation): Promise<void> {
    const node = this.deps.membership.find(operation.entry.from);
    // Resumed after the member was already forgotten: it is done.
    if (!node) return;
    // First it stops counting (eligibility, synchronous set), then commits stop waiting for it, then it goes.
    const state = await this.deps.store.update(operation.guard, (current) => {
      const base = current!;
      const joining = { ...base.joining };
      delete joining[node.name];
      return {
        ...base,
        eligible: without(base.eligible, node.name),
        syncSet: without(base.syncSet, node.name),
        fenced: without(base.fenced, node.name),
        joining,
      };
    });
    const primary = this.node(state.primary);
    await withNodeClient(primary, this.deps.superuser, this.deps.config.nodeTimeoutMs, (client) =>
      setSynchronousStandbys(client, this.deps.config.synchronous ? state.syncSet : []),
    );
    operation.assertHeld();
    await this.stopQuietly(node);
    await this.deps.driver.destroy(node);
    let slotDropped = false;
    for (let attempt = 0; attempt < 50 && !slotDropped; attempt += 1) {
      slotDropped = await withNodeClient(primary, this.deps.superuser, this.deps.config.nodeTimeoutMs, async (client) => {
        await dropSlot(client, slotNameFor(node));
        return (await client.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", [slotNameFor(node)])).rowCount === 0;
      });
      if (!slotDropped) await sleep(100); // its WAL sender is still exiting
    }
    await this.deps.membership.remove(node.name);
    await operation.finish();
    await this.deps.events.emit({
      kind: "node:removed",
      severity: "warning",
      node: node.name,
      message: `${node.name} removed from the cluster${slotDropped ? "" : " (its slot is still active on the primary)"}`,
      data: { slotDropped },
    });
    await this.deps.refreshTopology().catch(() => undefined);
  }

  // ---- resume ----------------------------------------------------------------

  /** Runs an operation adopted from a dead instance's journal to its end. */
  async resume(operation: RunningOperation): Promise<void> {
    this.deps.logger.warn(
      { operation: operation.entry.id, kind: operation.entry.kind, stage: operation.entry.stage },
      "resuming an operation another instance left unfinished",
    );
    const run = async (): Promise<unknown> => {
      switch (operation.entry.kind) {
        case "failover":
          return this.runFailover(operation);
        case "switchover":
        case "failback":
          return this.runSwitchover(operation);
        case "rejoin":
          return this.runRejoin(operation);
        case "add-replica":
          return this.runAddReplica(operation);
        case "remove-replica":
          return this.runRemoveReplica(operation);
      }
    };
    await this.tracked(operation, run).catch((error: Error) =>
      this.deps.logger.error({ operation: operation.entry.id, err: error.message }, "resumed operation failed"),
    );
  }

  // ---- helpers ---------------------------------------------------------------

  /** An operation in flight answers first: its preconditions would otherwise mislead (the primary is moving). */
  private async refuseWhileBusy(): Promise<void> {
    const running = await this.deps.journal.current();
    if (running) throw operationInProgress(running);
  }

  /** The primary's last LSN the monitor saw (any instance's), for the loss bound of a manual failover. */
  private async lastSeenLsn(primary: NodeRef): Promise<string | null> {
    const seen = await lastSeenPrimaryLsn(this.deps.redis, this.deps.keys.primaryLsn);
    return seen?.node === primary.name ? seen.lsn : null;
  }

  private async writableNodes(): Promise<NodeFacts[]> {
    const facts = await Promise.all(
      this.deps.membership.nodes.map((node) => readNodeFacts(node, this.deps.superuser, this.deps.config.nodeTimeoutMs)),
    );
    return facts.filter((fact): fact is NodeFacts => fact !== null && !fact.inRecovery && !fact.readOnly);
  }

  private newEntry(
    kind: JournalEntry["kind"],
    trigger: JournalEntry["trigger"],
    from: string,
    to: string | null,
    force: boolean,
    reason: string,
    facts: JournalEntry["facts"],
  ): JournalEntry {
    return {
      id: randomUUID(),
      kind,
      trigger,
      from,
      to,
      force,
      reason,
      stage: "begun",
      startedAt: new Date().toISOString(),
      times: {},
      facts,
    };
  }

  /**
   * Runs an operation's work, counted (busy) and kept for `drain`; whatever
   * way it ends, its journal is settled: finished, or abandoned to be resumed
   * when another instance took it over (or it must be retried from its journal).
   */
  private async tracked<T>(operation: RunningOperation, work: () => Promise<T>): Promise<T> {
    this.inFlight += 1;
    const running = (async () => {
      try {
        return await work();
      } catch (error) {
        // Another instance holds it now: only let go (finishing would delete its entry).
        if (error instanceof StaleWriterError && !operation.settled) operation.abandon();
        throw error;
      } finally {
        if (!operation.settled) await operation.finish().catch(() => operation.abandon());
        this.inFlight -= 1;
      }
    })();
    this.running.add(running);
    void running.catch(() => undefined).finally(() => this.running.delete(running));
    return running;
  }

  /**
   * Waits (at most `timeoutMs`) for the operations running here: the service
   * stops under none of them. One still running then is abandoned by its
   * journal's lock expiring, and resumed by another instance.
   */
  async drain(timeoutMs: number): Promise<void> {
    if (this.running.size === 0) return;
    await settlesWithin(Promise.allSettled([...this.running]), timeoutMs);
  }

  private recordOf(entry: JournalEntry, status: FailoverRecord["status"], error: string | null): FailoverRecord {
    const finishedAt = status === "running" ? null : new Date().toISOString();
    const lost = entry.facts.lostBytes;
    return {
      id: entry.id,
      kind: entry.kind === "switchover" || entry.kind === "failback" ? entry.kind : "failover",
      trigger: entry.trigger,
      from: entry.from,
      to: entry.to,
      status,
      reason: entry.reason,
      error,
      lostBytes: typeof lost === "number" ? lost : null,
      startedAt: entry.startedAt,
      fencedAt: entry.times.fenced ?? null,
      promotedAt: entry.times.promoted ?? null,
      finishedAt,
      durationMs: finishedAt ? Date.parse(finishedAt) - Date.parse(entry.startedAt) : null,
    };
  }

  private async emitStage(
    kind: EventKind & `failover:${string}`,
    operation: RunningOperation,
    severity: "info" | "warning" | "critical",
    message: string,
  ): Promise<void> {
    await this.deps.events.emit({
      kind,
      severity,
      node: operation.entry.to ?? operation.entry.from,
      message,
      data: this.recordOf(operation.entry, "running", null),
    } as never);
  }

  /**
   * An operation that failed. Before its point of no return (nothing
   * promoted, the old primary not stopped) it is over: the journal finished,
   * a failover:failed event. After it, finishing would forget a half-changed
   * cluster: the journal is abandoned, and the leader resumes it from there
   * once its lock expires (every step being idempotent).
   */
  private async failed(operation: RunningOperation, error: unknown, pastNoReturn = false): Promise<never> {
    if (error instanceof StaleWriterError) {
      operation.abandon();
      throw new RelevoError(
        ErrorCode.OperationInProgress,
        `${operation.entry.kind} ${operation.entry.id} was taken over by another instance`,
      );
    }
    const message = (error as Error).message;
    if (pastNoReturn) {
      operation.abandon();
      this.deps.logger.error(
        { operation: operation.entry.id, stage: operation.entry.stage, err: message },
        "operation failed past its point of no return: left in the journal to be resumed",
      );
      throw error;
    }
    await operation.finish().catch(() => undefined);
    const record = this.recordOf(operation.entry, "failed", message);
    await this.deps.events.emit({
      kind: "failover:failed",
      severity: "critical",
      node: operation.entry.from,
      message: `${operation.entry.kind} ${operation.entry.id} failed at stage ${operation.entry.stage}: ${message}`,
      data: record,
    });
    throw error;
  }
}

/** Records the primary's last LSN seen (the monitor's checks, a promotion), tied to that node. */
export async function recordPrimaryLsn(redis: Redis, key: string, node: string, lsn: string): Promise<void> {
  await redis.set(key, JSON.stringify({ node, lsn }));
}

export async function lastSeenPrimaryLsn(redis: Redis, key: string): Promise<{ node: string; lsn: string } | null> {
  const raw = await redis.get(key);
  return raw ? (JSON.parse(raw) as { node: string; lsn: string }) : null;
}
