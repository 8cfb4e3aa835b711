import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import { NodeProber } from "./node-probe";
import type { Credentials } from "../postgres/connection";
import { buildSnapshot, type ClusterSnapshot, type DriverView, type NodeObservation, type NodeRole } from "./topology";

/** One node, one round: PostgreSQL's view (or why it could not be had) and the driver's. */
export async function observeNode(
  node: NodeRef,
  prober: NodeProber,
  driver: NodeDriver,
  previous: ClusterSnapshot | null,
): Promise<NodeObservation> {
  const checkedAt = new Date().toISOString();
  const [probe, view, fallbackRole] = await Promise.all([
    prober.probe().catch((error: Error) => ({ error: error.message || String(error) })),
    driverView(driver, node),
    fallbackRoleOf(driver, node, previous),
  ]);
  return { name: node.name, host: node.host, port: node.port, probe, driver: view, fallbackRole, checkedAt };
}

async function driverView(driver: NodeDriver, node: NodeRef): Promise<DriverView> {
  try {
    const view = await driver.describe(node);
    const pid = view.state.phase === "running" || view.state.phase === "paused" ? view.state.pid : null;
    return {
      kind: view.driver,
      state: view.state.phase,
      pid,
      dataDirectory: view.dataDirectory,
      containerId: view.containerId ?? null,
      container: view.container ?? null,
      error: null,
    };
  } catch (error) {
    return {
      kind: driver.kind,
      state: "unknown",
      pid: null,
      dataDirectory: driver.dataDirectory(node),
      containerId: null,
      container: null,
      error: (error as Error).message || String(error),
    };
  }
}

/** When a node cannot be asked: its last known role, else what its data directory says. */
async function fallbackRoleOf(driver: NodeDriver, node: NodeRef, previous: ClusterSnapshot | null): Promise<NodeRole> {
  const known = previous?.nodes.find((candidate) => candidate.name === node.name);
  if (known) return known.role;
  const standbySignal = await driver.readFile(node, "standby.signal").catch(() => null);
  return standbySignal === null ? "primary" : "replica";
}

/** A one-off snapshot without the service (the CLI's `status`). */
export async function observeClusterOnce(options: {
  clusterName: string;
  nodes: readonly NodeRef[];
  driver: NodeDriver;
  credentials: Credentials;
  timeoutMs: number;
  lagAlertBytes: number;
}): Promise<ClusterSnapshot> {
  const probers = options.nodes.map((node) => new NodeProber(node, options.credentials, options.timeoutMs));
  try {
    const observations = await Promise.all(options.nodes.map((node, i) => observeNode(node, probers[i]!, options.driver, null)));
    return buildSnapshot(options.clusterName, observations, options.lagAlertBytes, new Date().toISOString());
  } finally {
    await Promise.all(probers.map((prober) => prober.close()));
  }
}
