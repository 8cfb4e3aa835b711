import { randomUUID } from "node:crypto";
import type Redis from "ioredis";
import type { BootstrapConfig, BootstrapDeps } from "../cluster/bootstrap";
import type { Membership } from "../cluster/membership";
import type { RelevoConfig } from "../config/config";
import { ErrorCode, RelevoError } from "../errors";
import type { EventLog } from "../events/event-log";
import type { EventKind, FailoverRecord } from "../events/event-map";
import type { Logger } from "../log";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import type { ArchivedWal } from "../wal/archived-wal";
import type { Credentials } from "../postgres/connection";
import { readNodeFacts, type NodeFacts } from "../postgres/node-facts";
import type { RedisKeys } from "../redis/keys";
import type { Secrets } from "../secrets/secrets-store";
import { settlesWithin } from "../util/sleep";
import { ClusterStateStore, StaleWriterError, initialState, type ClusterState } from "./cluster-state";
import { operationInProgress, type JournalEntry, type OperationJournal, type RunningOperation } from "./operation-journal";

export type OperationsConfig = BootstrapConfig &
  Pick<RelevoConfig, "synchronous" | "failoverMaximumLagBytes" | "preferredPrimary" | "switchoverCatchUpTimeoutMs">;

export interface FailoverOperationsDeps {
  readonly config: OperationsConfig;
  /** The members, changed in place by addReplica / removeReplica. */
  readonly membership: Membership;
  readonly driver: NodeDriver;
  readonly secrets: Secrets;
  readonly superuser: Credentials;
  readonly redis: Redis;
  readonly keys: Pick<RedisKeys, "primaryLsn" | "leases" | "maintenance">;
  readonly store: ClusterStateStore;
  readonly journal: OperationJournal;
  readonly events: EventLog;
  readonly logger: Logger;
  /**
   * The WAL archive (the repository's archive objects and what the archiver
   * received, see ArchivedWal): the timeline histories a stopped old primary
   * must know before it is promoted, the one written for it (see
   * ArchivedWal.addHistory), and the branches whose number it must not
   * share, set aside.
   */
  readonly archive: Pick<ArchivedWal, "names" | "read" | "addHistory" | "setAside">;
  /** Everything bootstrap needs to seed a replica again (rejoin's fallback). */
  readonly bootstrap: BootstrapDeps;
  /** Polls the topology now (after a change of primary, so readers see it at once). */
  readonly refreshTopology: () => Promise<unknown>;
}

/** A new journal entry's parameters (stage, times and id are the journal's own). */
export interface EntryRequest {
  readonly kind: JournalEntry["kind"];
  readonly trigger: JournalEntry["trigger"];
  readonly from: string;
  readonly to?: string | null;
  readonly force?: boolean;
  readonly reason: string;
  readonly facts?: JournalEntry["facts"];
}

export function newEntry(request: EntryRequest): JournalEntry {
  return {
    id: randomUUID(),
    kind: request.kind,
    trigger: request.trigger,
    from: request.from,
    to: request.to ?? null,
    force: request.force ?? false,
    reason: request.reason,
    stage: "begun",
    startedAt: new Date().toISOString(),
    times: {},
    facts: request.facts ?? {},
  };
}

/** The Failover record of a journaled change of primary, as events and the catalog carry it. */
export function recordOf(entry: JournalEntry, status: FailoverRecord["status"], error: string | null): FailoverRecord {
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

/**
 * What every operation (failover, switchover, rejoin, replicas) shares: its
 * dependencies, the members and recorded state, node facts, and the
 * discipline of a journaled run — counted while it runs, its journal always
 * settled, its failure reported at the right side of its point of no return.
 */
export class OperationContext {
  private inFlight = 0;
  private readonly running = new Set<Promise<unknown>>();

  constructor(readonly deps: FailoverOperationsDeps) {}

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

  /** The node's facts now (null when it does not answer within the node timeout). */
  facts(node: NodeRef): Promise<NodeFacts | null> {
    return readNodeFacts(node, this.deps.superuser, this.deps.config.nodeTimeoutMs, this.deps.config.clusterName);
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

  private async writableNodes(): Promise<NodeFacts[]> {
    const facts = await Promise.all(this.deps.membership.nodes.map((node) => this.facts(node)));
    return facts.filter((fact): fact is NodeFacts => fact !== null && !fact.inRecovery && !fact.readOnly);
  }

  /** An operation in flight answers first: its preconditions would otherwise mislead (the primary is moving). */
  async refuseWhileBusy(): Promise<void> {
    const running = await this.deps.journal.current();
    if (running) throw operationInProgress(running);
  }

  /** Stops a node however it can (fast, else killed); a frozen one is killed. */
  async stopQuietly(node: NodeRef): Promise<void> {
    const state = await this.deps.driver.state(node);
    if (state.phase === "paused") return this.deps.driver.kill(node);
    if (state.phase !== "running") return;
    try {
      await this.deps.driver.stop(node, { mode: "fast", timeoutMs: 15000 });
    } catch {
      await this.deps.driver.kill(node);
    }
  }

  /**
   * Runs an operation's work, counted (busy) and kept for `drain`; whatever
   * way it ends, its journal is settled: finished, or abandoned to be resumed
   * when another instance took it over (or it must be retried from its journal).
   */
  async tracked<T>(operation: RunningOperation, work: () => Promise<T>): Promise<T> {
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

  /** Publishes a stage of a change of primary, with its record so far. */
  async emitStage(
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
      data: recordOf(operation.entry, "running", null),
    });
  }

  /**
   * An operation that failed. Before its point of no return (nothing
   * promoted, the old primary not stopped) it is over: the journal finished,
   * a failover:failed event. After it, finishing would forget a half-changed
   * cluster: the journal is abandoned, and the leader resumes it from there
   * once its lock expires (every step being idempotent).
   */
  async failed(operation: RunningOperation, error: unknown, options: { pastNoReturn: boolean }): Promise<never> {
    if (error instanceof StaleWriterError) {
      operation.abandon();
      throw new RelevoError(
        ErrorCode.OperationInProgress,
        `${operation.entry.kind} ${operation.entry.id} was taken over by another instance`,
      );
    }
    const message = (error as Error).message;
    if (options.pastNoReturn) {
      operation.abandon();
      this.deps.logger.error(
        { operation: operation.entry.id, stage: operation.entry.stage, err: message },
        "operation failed past its point of no return: left in the journal to be resumed",
      );
      throw error;
    }
    await operation.finish().catch(() => undefined);
    const record = recordOf(operation.entry, "failed", message);
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
