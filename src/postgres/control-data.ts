import type { Client } from "pg";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";

/**
 * pg_controldata of a stopped node: its control file says how the server
 * last stopped and where its last checkpoint is, which is what rejoin and
 * switchover need to know before they start it again.
 */
export async function readControlData(driver: NodeDriver, node: NodeRef, options: { allowFailure?: boolean } = {}): Promise<string> {
  const result = await driver.exec(node, ["pg_controldata", "-D", driver.dataDirectory(node)], {
    mode: "offline",
    allowFailure: options.allowFailure ?? false,
  });
  return result.stdout;
}

/** "Latest checkpoint location" (after a clean stop, the shutdown checkpoint); null when absent. */
export function latestCheckpointLocation(controlData: string): string | null {
  return /Latest checkpoint location:\s+([0-9A-F]+\/[0-9A-F]+)/.exec(controlData)?.[1] ?? null;
}

/**
 * Whether the node was a primary stopped cleanly (a smart or fast shutdown:
 * "shut down", not "in production" after a crash): its WAL ends with its
 * shutdown checkpoint, which every standby streaming from it received.
 */
export function stoppedCleanlyAsPrimary(controlData: string): boolean {
  return /Database cluster state:\s+shut down\s*$/m.test(controlData);
}

/** The timeline of the node's last checkpoint (for a primary stopped cleanly: the timeline it wrote). */
export function latestCheckpointTimeline(controlData: string): number | null {
  const timeline = /Latest checkpoint's TimeLineID:\s+(\d+)/.exec(controlData)?.[1];
  return timeline ? Number(timeline) : null;
}

/** Whether the node was a standby when it stopped (in archive recovery, or shut down in recovery). */
export function stoppedAsStandby(controlData: string): boolean {
  return /Database cluster state:\s+(in archive recovery|shut down in recovery)/.test(controlData);
}

/**
 * The system identifier of a running node: initdb draws it once, every
 * physical copy (replica, backup, restore, PITR) keeps it, so it names the
 * cluster whatever its timeline. A bigint, kept as text (it exceeds 2^53).
 */
export async function readSystemIdentifier(client: Pick<Client, "query">): Promise<string> {
  const result = await client.query<{ id: string }>("SELECT system_identifier::text AS id FROM pg_control_system()");
  return result.rows[0]!.id;
}
