import type { Client } from "pg";
import type { NodeRef } from "../nodes/node-driver";
import { withNodeClient, type Credentials } from "../postgres/connection";
import type { ReloadConfirmation } from "../postgres/checkpoint-after-reload";
import { sleep } from "../util/sleep";
import { StaleWriterError, type ClusterState, type ClusterStateStore, type StateGuard, type WriteConditions } from "./cluster-state";
import { joinProgress, standbysCaughtUp, standbysToJoin } from "./monitor-rules";
import type { StandbySeen } from "./primary-check";
import { monotonicNowMs } from "../util/monotonic-clock";

/**
 * How often the primary is polled while a member of the synchronous set is
 * not eligible yet: a standby that joined is eligible at the first poll that
 * shows it holds every acknowledged commit, so a primary dying right after a
 * standby joined finds it eligible.
 */
export const JOIN_POLL_MS = 100;

/**
 * One confirmation on `primary` (see CommitWaitConfirmation): whether a
 * checkpoint since the reload was found, one was run (only when
 * `mayCheckpoint`), or neither. `signal` aborts it when the monitor stops.
 * It calls `checkpointIssued` right before it sends a CHECKPOINT (see
 * confirmReloadByCheckpoint): the rate limit counts from there.
 */
export type ConfirmCommitWait = (
  primary: NodeRef,
  options: { readonly signal: AbortSignal; readonly mayCheckpoint: boolean; readonly checkpointIssued: () => void },
) => Promise<ReloadConfirmation>;

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
 * this monitor has not confirmed it on), the checkpointer is shown to have
 * processed the reload, on a connection opened after it: by a checkpoint
 * that began after the reload and has completed (one the server ran by
 * itself), else by a CHECKPOINT (see confirmReloadByCheckpoint). Only then
 * are join points taken. The confirmation runs in the background (a
 * CHECKPOINT may take long on a busy primary), never in the monitor's round.
 *
 * A standby flapping in and out of the set would request an immediate
 * CHECKPOINT at each return, every few seconds, each writing every dirty
 * buffer at full speed and making the next writes log full-page images: so
 * at most one CHECKPOINT is requested per `checkpointIntervalMs` on one
 * primary. Until another is allowed, each request only looks for a checkpoint
 * that followed the reload; the standby stays ineligible meanwhile (the
 * cautious side: it is not promoted while its commits may not have waited).
 * The interval runs from when a CHECKPOINT was sent, whatever its outcome:
 * one that failed, timed out or was given up is still carried out by the
 * server's checkpointer, and asking again at once would queue another
 * immediate checkpoint right behind it, on exactly the busy primaries whose
 * checkpoints take long.
 */
export class CommitWaitConfirmation {
  private confirmedOn: string | null = null;
  private pending: Promise<void> | null = null;
  private pendingFor: string | null = null;
  /** Bumped by every forget(): a checkpoint requested before it confirms nothing. */
  private generation = 0;
  /** The last CHECKPOINT sent: on which primary, and when. */
  private lastCheckpoint: { primary: string; at: number } | null = null;

  /** Aborted on stop: a checkpoint under way ends its connection rather than outlive the monitor. */
  private stopping = new AbortController();

  constructor(
    private readonly confirm: ConfirmCommitWait,
    private readonly options: { readonly checkpointIntervalMs: number; readonly now?: () => number },
  ) {}

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

  /**
   * Requests the confirmation on `primary`, unless confirmed or under way; a
   * failure, or a confirmation that found no checkpoint and was not allowed
   * one yet, is tried again at the next request.
   */
  request(primary: NodeRef): void {
    if (this.confirmedOn === primary.name || this.pendingFor === primary.name) return;
    const generation = this.generation;
    const askedAt = (this.options.now ?? monotonicNowMs)();
    const mayCheckpoint = checkpointAllowed(this.lastCheckpoint, primary.name, askedAt, this.options.checkpointIntervalMs);
    this.pendingFor = primary.name;
    const checkpointIssued = (): void => {
      this.lastCheckpoint = { primary: primary.name, at: (this.options.now ?? monotonicNowMs)() };
    };
    const run = this.confirm(primary, { signal: this.stopping.signal, mayCheckpoint, checkpointIssued }).then(
      (outcome) => {
        if (this.generation !== generation) return;
        if (outcome !== "unconfirmed") this.confirmedOn = primary.name;
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
    const deadline = monotonicNowMs() + withinMs;
    while (this.pending !== null && monotonicNowMs() < deadline) {
      let timer: NodeJS.Timeout | undefined;
      const expired = new Promise<void>((resolve) => (timer = setTimeout(resolve, deadline - monotonicNowMs())));
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

/** Whether a CHECKPOINT may be requested on `primary` at `now`: none on it within the last `intervalMs`. Pure. */
export function checkpointAllowed(
  last: { readonly primary: string; readonly at: number } | null,
  primary: string,
  now: number,
  intervalMs: number,
): boolean {
  return last === null || last.primary !== primary || now - last.at >= intervalMs;
}

export interface JoinPolling {
  readonly primary: NodeRef;
  readonly credentials: Credentials;
  readonly timeoutMs: number;
  /** synchronous_standby_names as the monitor set it: joins are judged only once the primary runs with it. */
  readonly wanted: string;
  /** Whether a standby of that name counts (a member of the cluster, not fenced). */
  readonly counts: (name: string) => boolean;
  /** Polls until then (the monitor's next check; monotonicNowMs, not the wall clock), or until nobody is joining. */
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
      while (someoneJoining(state) && monotonicNowMs() < polling.until) {
        const started = monotonicNowMs();
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
        await sleep(Math.min(Math.max(0, JOIN_POLL_MS - (monotonicNowMs() - started)), Math.max(0, polling.until - monotonicNowMs())));
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
