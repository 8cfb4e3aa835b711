import type { Client } from "pg";
import type { NodeRef } from "../nodes/node-driver";
import { withNodeClient, type Credentials } from "../postgres/connection";
import { sleep } from "../util/sleep";
import { StaleWriterError, type ClusterState, type ClusterStateStore, type StateGuard, type WriteConditions } from "./cluster-state";
import { joinProgress, standbysCaughtUp, standbysToJoin } from "./monitor-rules";
import type { StandbySeen } from "./primary-check";

/**
 * How often the primary is polled while a member of the synchronous set is
 * not eligible yet: a standby that joined is eligible at the first poll that
 * shows it holds every acknowledged commit, so a primary dying right after a
 * standby joined finds it eligible.
 */
export const JOIN_POLL_MS = 100;

/**
 * Whether the primary's commits really wait for its synchronous standbys.
 * PostgreSQL decides that on a flag (`sync_standbys_defined`) that only the
 * checkpointer updates, when it processes a reload — and a spread checkpoint
 * running behind schedule (heavy WAL, as right after a promotion) leaves the
 * reload pending until it ends. Meanwhile `pg_stat_replication` already
 * reports the standby `sync`/`quorum` (computed from the backend's own copy
 * of the setting), yet commits return without waiting for it: a join point
 * read then would make eligible a standby that misses commits acknowledged
 * after it. So after the setting goes from empty to a set (or on a primary
 * this monitor has not confirmed it on), a CHECKPOINT is requested on a
 * connection opened after the reload: it returns once a checkpoint that
 * started after the request has finished, and the checkpointer processes a
 * pending reload before starting one. Only then are join points taken.
 * The CHECKPOINT runs in the background (it may take long on a busy
 * primary), never in the monitor's round.
 */
export class CommitWaitConfirmation {
  private confirmedOn: string | null = null;
  private pending: Promise<void> | null = null;
  private pendingFor: string | null = null;
  /** Bumped by every forget(): a checkpoint requested before it confirms nothing. */
  private generation = 0;

  /** Aborted on stop: a checkpoint under way ends its connection rather than outlive the monitor. */
  private stopping = new AbortController();

  constructor(private readonly checkpoint: (primary: NodeRef, stopping: AbortSignal) => Promise<void>) {}

  /**
   * What the monitor saw this round: the setting `names` on `primary`. An
   * empty setting (commits wait for nobody) or another primary than the one
   * confirmed means nothing is confirmed any more.
   */
  observe(primary: string, names: string): void {
    if (names === "" || (this.confirmedOn !== null && this.confirmedOn !== primary)) this.forget();
  }

  /** The setting just went from empty to a set: commits wait only once a checkpoint has confirmed it. */
  forget(): void {
    this.generation += 1;
    this.confirmedOn = null;
    this.pendingFor = null;
  }

  /** Whether commits on `primary` are known to wait for its setting. */
  confirmed(primary: string): boolean {
    return this.confirmedOn === primary;
  }

  /** Requests the confirming checkpoint on `primary`, unless confirmed or under way; a failure is tried again next time. */
  request(primary: NodeRef): void {
    if (this.confirmedOn === primary.name || this.pendingFor === primary.name) return;
    const generation = this.generation;
    this.pendingFor = primary.name;
    const run = this.checkpoint(primary, this.stopping.signal).then(
      () => {
        if (this.generation !== generation) return;
        this.confirmedOn = primary.name;
        this.pendingFor = null;
      },
      () => {
        if (this.generation === generation) this.pendingFor = null;
      },
    );
    this.pending = run;
    void run.finally(() => {
      if (this.pending === run) this.pending = null;
    });
  }

  /**
   * The monitor's stop: waits for a checkpoint under way up to `withinMs`,
   * then aborts it (its connection ended: the server finishes the
   * checkpoint without us), so neither a connection is left open nor a
   * shutdown held for minutes by a busy primary's checkpoint.
   */
  async settled(withinMs: number): Promise<void> {
    const deadline = Date.now() + withinMs;
    while (this.pending !== null && Date.now() < deadline) {
      let timer: NodeJS.Timeout | undefined;
      const expired = new Promise<void>((resolve) => (timer = setTimeout(resolve, deadline - Date.now())));
      await Promise.race([this.pending, expired]);
      clearTimeout(timer);
    }
    if (this.pending === null) return;
    this.stopping.abort();
    while (this.pending !== null) await this.pending;
    // A monitor started again asks again, on a signal of its own.
    this.stopping = new AbortController();
  }
}

export interface JoinPolling {
  readonly primary: NodeRef;
  readonly credentials: Credentials;
  readonly timeoutMs: number;
  /** synchronous_standby_names as the monitor set it: joins are judged only once the primary runs with it. */
  readonly wanted: string;
  /** Whether a standby of that name counts (a member of the cluster, not fenced). */
  readonly counts: (name: string) => boolean;
  /** Polls until then (the monitor's next check), or until nobody is joining. */
  readonly until: number;
  readonly store: ClusterStateStore;
  readonly guard: StateGuard;
  /** The monitor's: refused once an operation began or the primary changed. */
  readonly conditions: WriteConditions;
  /** Join points are taken only once commits are known to wait (see CommitWaitConfirmation). */
  readonly commitWait: CommitWaitConfirmation;
}

/**
 * Synchronous mode: polls the primary every JOIN_POLL_MS while a member of
 * the set is not eligible. A member the primary reports as a synchronous
 * standby (`sync` or `quorum` in pg_stat_replication) gets as its join point
 * the primary's LSN read after that report (every commit acknowledged since
 * waited for it, and none acknowledged before lies past that LSN: it was
 * flushed first); at the first later poll where its flush_lsn is at or past
 * that point, it holds every acknowledged commit and becomes eligible.
 * Returns the state as last written; stops quietly when the primary does not
 * answer (the monitor's next check judges that).
 */
export async function pollJoiningStandbys(state: ClusterState, polling: JoinPolling): Promise<ClusterState> {
  if (!someoneJoining(state)) return state;
  polling.commitWait.request(polling.primary);
  try {
    await withNodeClient(polling.primary, polling.credentials, polling.timeoutMs, async (client) => {
      while (someoneJoining(state) && Date.now() < polling.until) {
        const started = Date.now();
        // The standbys first, then the LSN: a join point read after the report that the primary waits for it.
        const standbys = await readStandbys(client);
        const primary = await readPrimary(client);
        if (primary.inRecovery) return;
        if (primary.synchronousStandbyNames === polling.wanted && polling.commitWait.confirmed(polling.primary.name)) {
          const streaming = new Map(standbys.filter((s) => s.state === "streaming" && polling.counts(s.name)).map((s) => [s.name, s]));
          const joinNow = standbysToJoin(state, streaming);
          const caughtUp = standbysCaughtUp(state, streaming);
          if (joinNow.length > 0 || caughtUp.length > 0) {
            state = await polling.store.update(
              polling.guard,
              (current) => joinProgress(current ?? state, { joinNow, caughtUp, lsn: primary.lsn }),
              polling.conditions,
            );
          }
        }
        await sleep(Math.min(Math.max(0, JOIN_POLL_MS - (Date.now() - started)), Math.max(0, polling.until - Date.now())));
      }
    });
  } catch (error) {
    if (error instanceof StaleWriterError) throw error;
  }
  return state;
}

function someoneJoining(state: ClusterState): boolean {
  return state.syncSet.some((name) => !state.eligible.includes(name));
}

async function readStandbys(client: Client): Promise<StandbySeen[]> {
  const result = await client.query<StandbySeen>(
    `SELECT application_name AS name, state, flush_lsn::text AS "flushLsn", sync_state AS "syncState"
       FROM pg_stat_replication WHERE application_name <> 'relevo_archiver'`,
  );
  return result.rows;
}

async function readPrimary(client: Client): Promise<{ inRecovery: boolean; lsn: string; synchronousStandbyNames: string }> {
  const result = await client.query<{ inRecovery: boolean; lsn: string; synchronousStandbyNames: string }>(
    `SELECT pg_is_in_recovery() AS "inRecovery",
            CASE WHEN pg_is_in_recovery() THEN '0/0' ELSE pg_current_wal_lsn()::text END AS lsn,
            current_setting('synchronous_standby_names') AS "synchronousStandbyNames"`,
  );
  return result.rows[0]!;
}
