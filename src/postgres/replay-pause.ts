import type { Client } from "pg";
import { ErrorCode, RelevoError } from "../errors";
import { sleep } from "../util/sleep";

/**
 * Pausing a standby's WAL replay (PostgreSQL 14+): pg_wal_replay_pause()
 * only requests it; the startup process stops between two records, and
 * pg_get_wal_replay_pause_state() says 'paused' once it has. From then on
 * pg_last_wal_replay_lsn() stands still and names the end of the last
 * record applied. The WAL receiver goes on receiving and flushing, so a
 * synchronous commit (which waits for the flush) is not held up.
 */
export async function pauseReplay(client: Client, timeoutMs: number): Promise<void> {
  await client.query("SELECT pg_wal_replay_pause()");
  const deadline = Date.now() + timeoutMs;
  for (let polls = 1; ; polls += 1) {
    const state = await replayPauseState(client);
    if (state === "paused") return;
    if (Date.now() > deadline) {
      throw new RelevoError(ErrorCode.Timeout, `WAL replay did not pause within ${timeoutMs} ms (state: ${state})`);
    }
    await sleep(Math.min(100, 5 * polls));
  }
}

/** pg_get_wal_replay_pause_state(): "pause requested" until the startup process has stopped between two records. */
export type ReplayPauseState = "not paused" | "pause requested" | "paused";

/**
 * SQL for a standby's replay pause state. pg_get_wal_replay_pause_state()
 * raises an error once recovery has ended, so a node promoted between two
 * queries of one probe would read as unreachable: a primary is not paused.
 */
export const REPLAY_PAUSE_STATE_SQL = "CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE 'not paused' END";

/** A standby's replay pause state. */
export async function replayPauseState(client: Pick<Client, "query">): Promise<ReplayPauseState> {
  return (await client.query<{ state: ReplayPauseState }>(`SELECT ${REPLAY_PAUSE_STATE_SQL} AS state`)).rows[0]!.state;
}

/** Resumes replay (a no-op when it is not paused). */
export async function resumeReplay(client: Client): Promise<void> {
  await client.query("SELECT pg_wal_replay_resume()");
}

/** The end of the last WAL record the standby applied. */
export async function lastReplayedLsn(client: Client): Promise<string> {
  const lsn = (await client.query<{ lsn: string | null }>("SELECT pg_last_wal_replay_lsn()::text AS lsn")).rows[0]!.lsn;
  if (lsn === null) throw new RelevoError(ErrorCode.PreconditionFailed, "not a standby: no WAL replayed");
  return lsn;
}

/**
 * Whether an error is a query cancelled (or a session ended) because it
 * conflicted with WAL replay on a standby: a snapshot that needs rows a
 * replayed VACUUM removes, a lock replay needs, a dropped database. Retried
 * with a new snapshot.
 */
export function isRecoveryConflict(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  const message = (error as Error | null)?.message ?? "";
  return code === "40001" || code === "40P01" || code === "57P04" || /conflict with recovery/i.test(message);
}
