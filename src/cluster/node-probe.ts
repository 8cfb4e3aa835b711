import { Client } from "pg";
import type { NodeRef } from "../nodes/node-driver";
import { clientConfig, type Credentials } from "../postgres/connection";
import type { NodeProbe, SlotStatus } from "./topology";

const ROLE_SQL = `SELECT pg_is_in_recovery() AS in_recovery, current_setting('server_version') AS version`;

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
       (SELECT timeline_id FROM pg_control_checkpoint()) AS checkpoint_timeline`;

const RECEIVER_SQL = `
SELECT status, received_tli, sender_host, sender_port, slot_name, last_msg_receipt_time
  FROM pg_stat_wal_receiver`;

const SLOTS_SQL = `
SELECT slot_name, slot_type, active, restart_lsn::text AS restart_lsn, wal_status,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END,
                       restart_lsn)::float8 AS retained_bytes
  FROM pg_replication_slots ORDER BY slot_name`;

/**
 * One node's PostgreSQL view, over a connection kept open between polls (a
 * SCRAM handshake every second per node would be waste). Any error drops the
 * connection; the next probe reconnects.
 */
export class NodeProber {
  private client: Client | null = null;

  constructor(
    private readonly node: NodeRef,
    private readonly credentials: Credentials,
    private readonly timeoutMs: number,
  ) {}

  async probe(): Promise<NodeProbe> {
    try {
      const client = await this.connection();
      return await readProbe(client);
    } catch (error) {
      await this.close();
      throw error;
    }
  }

  async close(): Promise<void> {
    const client = this.client;
    this.client = null;
    await client?.end().catch(() => undefined);
  }

  private async connection(): Promise<Client> {
    if (this.client) return this.client;
    const client = new Client(clientConfig(this.node, this.credentials, this.timeoutMs));
    client.on("error", () => {
      if (this.client === client) this.client = null;
    });
    await client.connect();
    this.client = client;
    return client;
  }
}

async function readProbe(client: Client): Promise<NodeProbe> {
  const role = (await client.query(ROLE_SQL)).rows[0] as { in_recovery: boolean; version: string };
  const slots = (await client.query(SLOTS_SQL)).rows.map((row): SlotStatus => ({
    name: row.slot_name,
    type: row.slot_type,
    active: row.active,
    restartLsn: row.restart_lsn,
    walStatus: row.wal_status,
    retainedBytes: row.retained_bytes,
  }));
  if (!role.in_recovery) {
    const primary = (await client.query(PRIMARY_SQL)).rows[0];
    const senders = (await client.query(SENDERS_SQL)).rows.map((row) => ({
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
      timeline: primary.timeline,
      currentLsn: primary.current_lsn,
      receivedLsn: null,
      replayedLsn: null,
      lastReplayAt: null,
      replayLagSeconds: null,
      receiver: null,
      senders,
      slots,
    };
  }
  const replica = (await client.query(REPLICA_SQL)).rows[0];
  const receiverRow = (await client.query(RECEIVER_SQL)).rows[0];
  return {
    role: "replica",
    version: role.version,
    timeline: receiverRow?.received_tli ?? replica.checkpoint_timeline,
    currentLsn: replica.replayed_lsn,
    receivedLsn: replica.received_lsn,
    replayedLsn: replica.replayed_lsn,
    lastReplayAt: replica.last_replay_at ? new Date(replica.last_replay_at).toISOString() : null,
    replayLagSeconds: replica.replay_lag,
    receiver: receiverRow
      ? {
          status: receiverRow.status,
          senderHost: receiverRow.sender_host,
          senderPort: receiverRow.sender_port,
          slotName: receiverRow.slot_name,
          lastMessageAt: receiverRow.last_msg_receipt_time ? new Date(receiverRow.last_msg_receipt_time).toISOString() : null,
        }
      : null,
    senders: [],
    slots,
  };
}
