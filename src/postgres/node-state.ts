import type { Client, QueryResult } from "pg";
import { REPLAY_PAUSE_STATE_SQL, type ReplayPauseState } from "./replay-pause";

/**
 * What PostgreSQL says of one node, read in one place for the topology
 * collector (every poll) and for failover operations (before each step).
 */
export type NodeRole = "primary" | "replica";

export interface SlotStatus {
  readonly name: string;
  readonly type: string;
  readonly active: boolean;
  readonly restartLsn: string | null;
  readonly walStatus: string | null;
  readonly retainedBytes: number | null;
}

/** One node's PostgreSQL view: role, timeline, LSNs, replication both ways, slots. */
export interface NodeState {
  readonly role: NodeRole;
  readonly version: string;
  /** The server's cluster_name: who answers (see nodeClusterName), whatever port it was asked on. */
  readonly clusterName: string;
  /** transaction_read_only: a fenced node restarted by hand answers writable = false. */
  readonly readOnly: boolean;
  readonly timeline: number | null;
  /**
   * A replica without a running WAL receiver: `timeline` is its last
   * restartpoint's (pg_control), which lags the timeline replayed until the
   * next restartpoint (up to checkpoint_timeout after a switch): a lower
   * bound, see readReachedTimeline.
   */
  readonly timelineFromRestartpoint?: boolean;
  readonly currentLsn: string | null;
  readonly receivedLsn: string | null;
  readonly replayedLsn: string | null;
  readonly lastReplayAt: string | null;
  readonly replayLagSeconds: number | null;
  /**
   * Replicas: whether WAL replay is paused (a reference point being taken
   * pauses it for a moment; a pause left behind is resumed by the replay
   * pause watch). Null on a primary.
   */
  readonly replayPause: ReplayPauseState | null;
  /** WAL receiver (replicas): status and the upstream it streams from. */
  readonly receiver: {
    readonly status: string;
    readonly senderHost: string | null;
    readonly senderPort: number | null;
    readonly slotName: string | null;
    readonly lastMessageAt: string | null;
    /** Milliseconds since the last message from the sender, by the node's own clock (null: none yet). */
    readonly silentMs: number | null;
  } | null;
  /** pg_stat_replication rows (primary): one per connected standby. */
  readonly senders: ReadonlyArray<{
    readonly applicationName: string;
    readonly state: string;
    readonly lagBytes: number | null;
    readonly writeLagSeconds: number | null;
    readonly flushLagSeconds: number | null;
    readonly replayLagSeconds: number | null;
    readonly syncState: string | null;
  }>;
  readonly slots: readonly SlotStatus[];
}

const ROLE_SQL = `SELECT pg_is_in_recovery() AS in_recovery, current_setting('server_version') AS version,
       current_setting('cluster_name') AS cluster_name, current_setting('transaction_read_only') = 'on' AS read_only`;

/**
 * Timeline of the WAL being written (a primary's): the checkpoint's timeline
 * lags behind a promotion until the next checkpoint, the current WAL file
 * name does not.
 */
export const CURRENT_TIMELINE_SQL = `('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int`;

const PRIMARY_SQL = `
SELECT pg_current_wal_lsn()::text AS current_lsn,
       ${CURRENT_TIMELINE_SQL} AS timeline`;

const SENDERS_SQL = `
SELECT application_name, state, sync_state,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8 AS lag_bytes,
       extract(epoch FROM write_lag)::float8 AS write_lag,
       extract(epoch FROM flush_lag)::float8 AS flush_lag,
       extract(epoch FROM replay_lag)::float8 AS replay_lag
  FROM pg_stat_replication`;

// On a replica the lag in seconds is the age of the last replayed transaction,
// but only while something is left to replay: an idle, caught-up replica is
// not behind, however old its last transaction.
const REPLICA_SQL = `
SELECT pg_last_wal_receive_lsn()::text AS received_lsn,
       pg_last_wal_replay_lsn()::text AS replayed_lsn,
       pg_last_xact_replay_timestamp() AS last_replay_at,
       CASE WHEN pg_last_wal_receive_lsn() IS NULL OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END AS replay_lag,
       (SELECT timeline_id FROM pg_control_checkpoint()) AS checkpoint_timeline,
       ${REPLAY_PAUSE_STATE_SQL} AS replay_pause`;

const RECEIVER_SQL = `
SELECT status, received_tli, sender_host, sender_port, slot_name, last_msg_receipt_time,
       (extract(epoch FROM now() - last_msg_receipt_time) * 1000)::float8 AS silent_ms
  FROM pg_stat_wal_receiver`;

const SLOTS_SQL = `
SELECT slot_name, slot_type, active, restart_lsn::text AS restart_lsn, wal_status,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END,
                       restart_lsn)::float8 AS retained_bytes
  FROM pg_replication_slots ORDER BY slot_name`;

/**
 * Reads a node's state over `client`: what the topology collector polls and
 * what failover operations decide on, one read for both.
 */
export async function readNodeState(client: Client): Promise<NodeState> {
  const role = first(await client.query<RoleRow>(ROLE_SQL));
  const slots = (await client.query<SlotRow>(SLOTS_SQL)).rows.map((row): SlotStatus => ({
    name: row.slot_name,
    type: row.slot_type,
    active: row.active,
    restartLsn: row.restart_lsn,
    walStatus: row.wal_status,
    retainedBytes: row.retained_bytes,
  }));
  if (!role.in_recovery) {
    const primary = first(await client.query<PrimaryRow>(PRIMARY_SQL));
    const senders = (await client.query<SenderRow>(SENDERS_SQL)).rows.map((row) => ({
      applicationName: row.application_name,
      state: row.state,
      syncState: row.sync_state,
      lagBytes: row.lag_bytes,
      writeLagSeconds: row.write_lag,
      flushLagSeconds: row.flush_lag,
      replayLagSeconds: row.replay_lag,
    }));
    return {
      role: "primary",
      version: role.version,
      clusterName: role.cluster_name,
      readOnly: role.read_only,
      timeline: primary.timeline,
      timelineFromRestartpoint: false,
      currentLsn: primary.current_lsn,
      receivedLsn: null,
      replayedLsn: null,
      lastReplayAt: null,
      replayLagSeconds: null,
      replayPause: null,
      receiver: null,
      senders,
      slots,
    };
  }
  const replica = first(await client.query<ReplicaRow>(REPLICA_SQL));
  const receiverRow = (await client.query<ReceiverRow>(RECEIVER_SQL)).rows[0];
  return {
    role: "replica",
    version: role.version,
    clusterName: role.cluster_name,
    readOnly: role.read_only,
    timeline: receiverRow?.received_tli ?? replica.checkpoint_timeline,
    timelineFromRestartpoint: (receiverRow?.received_tli ?? null) === null,
    currentLsn: replica.replayed_lsn,
    receivedLsn: replica.received_lsn,
    replayedLsn: replica.replayed_lsn,
    lastReplayAt: replica.last_replay_at ? new Date(replica.last_replay_at).toISOString() : null,
    replayLagSeconds: replica.replay_lag,
    replayPause: replica.replay_pause,
    receiver: receiverRow
      ? {
          status: receiverRow.status,
          senderHost: receiverRow.sender_host,
          senderPort: receiverRow.sender_port,
          slotName: receiverRow.slot_name,
          lastMessageAt: receiverRow.last_msg_receipt_time ? new Date(receiverRow.last_msg_receipt_time).toISOString() : null,
          silentMs: receiverRow.silent_ms,
        }
      : null,
    senders: [],
    slots,
  };
}

/** The one row a query of a single row returns (each of these always returns one). */
function first<Row extends object>(result: QueryResult<Row>): Row {
  const row = result.rows[0];
  if (row === undefined) throw new Error(`expected one row from ${result.command}, got none`);
  return row;
}

interface RoleRow {
  in_recovery: boolean;
  version: string;
  cluster_name: string;
  read_only: boolean;
}
interface SlotRow {
  slot_name: string;
  slot_type: string;
  active: boolean;
  restart_lsn: string | null;
  wal_status: string | null;
  retained_bytes: number | null;
}
interface PrimaryRow {
  current_lsn: string;
  timeline: number;
}
interface SenderRow {
  application_name: string;
  state: string;
  sync_state: string | null;
  lag_bytes: number | null;
  write_lag: number | null;
  flush_lag: number | null;
  replay_lag: number | null;
}
interface ReplicaRow {
  received_lsn: string | null;
  replayed_lsn: string | null;
  last_replay_at: Date | null;
  replay_lag: number | null;
  checkpoint_timeline: number | null;
  replay_pause: ReplayPauseState;
}
interface ReceiverRow {
  status: string;
  received_tli: number | null;
  sender_host: string | null;
  sender_port: number | null;
  slot_name: string | null;
  last_msg_receipt_time: Date | null;
  silent_ms: number | null;
}
