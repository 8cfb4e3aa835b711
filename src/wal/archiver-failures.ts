/**
 * The WAL archiver's failure streak: the rounds in a row in which it could
 * not stream from the primary (the primary unreachable, pg_receivewal
 * refused its login, a start point, a timeline). The third failure of a
 * streak is an `archive:failing` event, once per streak; a round that
 * streamed ends the streak. Pure.
 */

/** The failure of a streak that is reported. */
export const FAILING_AT = 3;

/**
 * How long pg_receivewal must have run before it exited for its round to
 * count as streaming. Every way it fails to stream ends it at once: a
 * refused connection or login, a start point or timeline the primary
 * refuses, WAL already removed. One that ran longer got past all of them,
 * and received what the primary sent until it ended (a primary restarted or
 * gone, a network cut). A connection attempt that hangs longer (no route,
 * SYN unanswered) would pass for streaming: pg_receivewal gets no
 * connect_timeout, which shifts the race between its first status report
 * (its start point, which moves a physical slot's restart_lsn back) and the
 * walsender's refusal of removed WAL that resumePastRemovedWal reads.
 */
export function streamedAfterMs(nodeTimeoutMs: number): number {
  return Math.max(10_000, 3 * nodeTimeoutMs);
}

export interface FailedRound {
  /** How long pg_receivewal ran before it exited; 0 when the round failed before it started it. */
  readonly ranMs: number;
  readonly streamedAfterMs: number;
}

export interface StreakStep {
  /** The streak's failures after this round: 0 when the round streamed. */
  readonly failures: number;
  /** Whether this round makes the `archive:failing` event (the streak's third failure, once per streak). */
  readonly failing: boolean;
  /** How long to wait before the next round: 0.5 s more per failure of the streak, at most 5 s. */
  readonly retryInMs: number;
}

/** The streak after a round that ended (pg_receivewal exited, or the round failed before it), `failures` the streak before it. */
export function afterRound(failures: number, round: FailedRound): StreakStep {
  const streamed = round.ranMs >= round.streamedAfterMs;
  const next = streamed ? 0 : failures + 1;
  return { failures: next, failing: next === FAILING_AT, retryInMs: Math.min(500 * Math.max(next, 1), 5000) };
}
