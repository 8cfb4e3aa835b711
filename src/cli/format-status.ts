import type { ClusterSnapshot } from "../cluster/topology";

/** `relevo status` as a table. Pure. */
export function formatStatus(snapshot: ClusterSnapshot): string {
  const header = ["NODE", "ROLE", "HOST:PORT", "REACHABLE", "REPLICATION", "LAG BYTES", "LAG S", "PID", "DATA DIRECTORY"];
  const rows = snapshot.nodes.map((node) => [
    node.name,
    node.role + (node.roleConfirmed ? "" : "?"),
    `${node.host}:${node.port}`,
    node.reachable ? "yes" : "no",
    node.replication?.state ?? "-",
    node.replication?.lagBytes === null || node.replication?.lagBytes === undefined ? "-" : String(node.replication.lagBytes),
    node.replication?.replayLagSeconds === null || node.replication?.replayLagSeconds === undefined
      ? "-"
      : node.replication.replayLagSeconds.toFixed(3),
    node.driver.pid === null ? "-" : String(node.driver.pid),
    node.driver.containerId ?? node.driver.dataDirectory,
  ]);
  const widths = header.map((title, i) => Math.max(title.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]): string =>
    cells
      .map((cell, i) => cell.padEnd(widths[i]!))
      .join("  ")
      .trimEnd();
  const summary = `cluster ${snapshot.name}: ${snapshot.health}${snapshot.healthReasons.length ? ` (${snapshot.healthReasons.join("; ")})` : ""}`;
  return [summary, line(header), ...rows.map(line)].join("\n");
}
