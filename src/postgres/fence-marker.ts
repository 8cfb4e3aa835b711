import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import { FENCE_MARKER } from "./managed-settings";
import { editStoppedNodeConf, FENCE_SETTING } from "./replication-config";

/**
 * A fenced node's data directory says so twice: default_transaction_read_only
 * in postgresql.auto.conf (should anything start it, read-write clients see
 * it and move on) and Relevo's marker file (Relevo itself never starts it as
 * it is). pg_rewind deletes both with the rest of the node's own files.
 */
export interface FenceMarker {
  readonly fencedAt: string;
  readonly reason: string;
}

/** The read-only setting and the marker on a stopped node's data directory. */
export async function markFenced(driver: NodeDriver, node: NodeRef, reason: string): Promise<void> {
  await editStoppedNodeConf(driver, node, { [FENCE_SETTING]: "on" });
  const marker: FenceMarker = { fencedAt: new Date().toISOString(), reason };
  await driver.writeFile(node, FENCE_MARKER, JSON.stringify(marker, null, 2) + "\n");
}

/** The marker, when the node has one (null too when it cannot be parsed: a marker still fences, see isFenced). */
export async function readFenceMarker(driver: NodeDriver, node: NodeRef): Promise<FenceMarker | null> {
  const content = await driver.readFile(node, FENCE_MARKER);
  if (content === null) return null;
  try {
    return JSON.parse(content.toString("utf8")) as FenceMarker;
  } catch {
    return null;
  }
}

export async function isFenced(driver: NodeDriver, node: NodeRef): Promise<boolean> {
  return (await driver.readFile(node, FENCE_MARKER)) !== null;
}

/** Only the marker: a node about to start as a standby (standby.signal keeps it from writing). */
export async function removeFenceMarker(driver: NodeDriver, node: NodeRef): Promise<void> {
  await driver.removeFiles(node, [FENCE_MARKER]);
}

/** Setting and marker off a stopped node that is to run again as it was (a switchover called off). */
export async function unfence(driver: NodeDriver, node: NodeRef): Promise<void> {
  await editStoppedNodeConf(driver, node, { [FENCE_SETTING]: null });
  await removeFenceMarker(driver, node);
}
