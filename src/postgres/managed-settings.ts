import type { RelevoConfig } from "../config/config";
import type { NodeRef, NodeTlsPaths } from "../nodes/node-driver";
import { configString } from "./config-values";
import { serverTlsSettings } from "./tls-settings";

/** Roles Relevo creates on the primary (see bootstrap). */
export const ROLE_SUPERUSER = "postgres";
export const ROLE_REPLICATION = "replicator";
export const ROLE_REWIND = "rewinder";
export const ROLE_APP = "relevo";
export const APP_DATABASE = "relevo";

export const MANAGED_CONF = "relevo.conf";
export const MARKER_FILE = "relevo.node.json";
/** Present while a node is fenced: Relevo does not start it as it is, only rejoins it as a replica. */
export const FENCE_MARKER = "relevo.fenced.json";

export interface NodeMarker {
  readonly cluster: string;
  readonly node: string;
  readonly createdAt: string;
}

/**
 * The cluster_name a node of Relevo's runs with: its identity as the server
 * itself reports it, so that whatever answers on a member's port can be told
 * from that member (a restored copy carries its own name).
 */
export function nodeClusterName(clusterName: string, nodeName: string): string {
  return `${clusterName}-${nodeName}`;
}

/**
 * Settings Relevo owns, in `relevo.conf`, included from postgresql.conf and
 * rewritten at every start (so a changed port takes effect, and a node of a
 * cluster from before TLS comes up with it). pg_basebackup copies the file
 * to replicas; each node then gets its own. `tls`: the node's TLS files as
 * its server sees them (NodeDriver.tlsPaths).
 */
export function managedConf(
  config: Pick<RelevoConfig, "clusterName" | "maxSlotWalKeepSize"> &
    Partial<Pick<RelevoConfig, "failoverCheckIntervalMs" | "failoverFailureThreshold">>,
  node: NodeRef,
  tls: NodeTlsPaths,
): string {
  // A replica must lose a hung primary within the failover detection window:
  // its WAL receiver asks for a reply after half the timeout of silence and
  // gives up after the whole of it.
  const detectionWindowMs = Math.max(2000, (config.failoverCheckIntervalMs ?? 1000) * (config.failoverFailureThreshold ?? 3));
  return [
    "# Managed by Relevo and rewritten at every start: put your own settings in",
    "# postgresql.conf (before the include) or use ALTER SYSTEM.",
    `cluster_name = ${configString(nodeClusterName(config.clusterName, node.name), "cluster_name")}`,
    `listen_addresses = ${configString(node.host, "listen_addresses")}`,
    `port = ${node.port}`,
    // TCP only: identical on every driver, and no socket path length limits.
    "unix_socket_directories = ''",
    "password_encryption = 'scram-sha-256'",
    "wal_level = replica",
    // Room for every replica, a base backup and a WAL streamer, with spares.
    "max_wal_senders = 16",
    "max_replication_slots = 16",
    // A dead replica's slot would otherwise retain WAL until the disk is full;
    // past this size the slot is invalidated and the replica must be reseeded.
    `max_slot_wal_keep_size = ${configString(config.maxSlotWalKeepSize, "max_slot_wal_keep_size")}`,
    "hot_standby = on",
    // Replicas tell the primary which rows their queries still need.
    "hot_standby_feedback = on",
    // pg_rewind needs either data checksums (initdb --data-checksums) or
    // wal_log_hints; checksums are on, hints make rewinds safe regardless.
    "wal_log_hints = on",
    `wal_sender_timeout = '${detectionWindowMs}ms'`,
    `wal_receiver_timeout = '${detectionWindowMs}ms'`,
    "wal_receiver_status_interval = '1s'",
    // A repointed or restarted standby tries its primary again quickly.
    "wal_retrieve_retry_interval = '1s'",
    // Every connection is TLS (pg_hba.conf has hostssl lines only), with the node's own certificate.
    ...serverTlsSettings(tls),
    "logging_collector = off",
    "log_line_prefix = '%m [%p] %q%u@%d '",
    "",
  ].join("\n");
}

/**
 * Only what is needed: replication for `replicator`, pg_rewind's normal login
 * for `rewinder` (it reads files through SQL functions), Prisma's `relevo`
 * role on its own database, and the superuser for Relevo's administration.
 * `hostssl` only: a connection without TLS matches no line and is refused.
 */
export function managedHba(network: string): string {
  const rows = [
    ["hostssl", "replication", ROLE_REPLICATION, network],
    ["hostssl", "postgres", ROLE_REWIND, network],
    ["hostssl", APP_DATABASE, ROLE_APP, network],
    ["hostssl", "all", ROLE_SUPERUSER, network],
  ];
  return [
    "# Managed by Relevo. TYPE DATABASE USER ADDRESS METHOD",
    ...rows.map((row) => `${row.map((cell) => cell.padEnd(12)).join(" ")} scram-sha-256`),
    "",
  ].join("\n");
}

/** The client network for pg_hba: the listen address itself (loopback by default). */
export function hbaNetworkFor(host: string): string {
  return host.includes(":") ? `${host}/128` : `${host}/32`;
}

export const INCLUDE_LINE = `include_if_exists = ${configString(MANAGED_CONF)}`;
