import type { RelevoConfig } from "../config/config";
import { ErrorCode, RelevoError } from "../errors";
import { callApi } from "./api-client";
import type { Output } from "./commands";

const FAILOVER_FIELDS = "id kind trigger from to status reason error lostBytes startedAt fencedAt promotedAt finishedAt durationMs";

interface FailoverRow {
  id: string;
  kind: string;
  from: string;
  to: string | null;
  status: string;
  error: string | null;
  lostBytes: number | null;
  durationMs: number | null;
}

/** One line for a finished change of primary, e.g. "failover 3f2…: node1 → node2 completed in 2140 ms, 0 bytes lost". Pure. */
export function describeFailover(row: FailoverRow): string {
  const duration = row.durationMs === null ? "" : ` in ${row.durationMs} ms`;
  const lost = row.lostBytes === null ? "" : `, ${row.lostBytes} bytes lost`;
  return `${row.kind.toLowerCase()} ${row.id}: ${row.from} → ${row.to ?? "?"} ${row.status.toLowerCase()}${duration}${lost}`;
}

/** Prints the record; a record that says it failed is an error (the API normally reports the failure itself). */
function report(row: FailoverRow, output: Output): void {
  output.out(describeFailover(row));
  if (row.status === "FAILED") throw new RelevoError(ErrorCode.CommandFailed, `${row.kind.toLowerCase()} ${row.id} failed: ${row.error}`);
}

export async function failoverCommand(config: RelevoConfig, options: { to?: string; force: boolean }, output: Output): Promise<void> {
  const { failover } = await callApi<{ failover: FailoverRow }>(
    config,
    `mutation($to: String, $force: Boolean!) { failover(to: $to, force: $force) { ${FAILOVER_FIELDS} } }`,
    {
      to: options.to ?? null,
      force: options.force,
    },
  );
  report(failover, output);
}

export async function switchoverCommand(config: RelevoConfig, options: { to: string }, output: Output): Promise<void> {
  const { switchover } = await callApi<{ switchover: FailoverRow }>(
    config,
    `mutation($to: String!) { switchover(to: $to) { ${FAILOVER_FIELDS} } }`,
    { to: options.to },
  );
  report(switchover, output);
}

export async function failbackCommand(config: RelevoConfig, output: Output): Promise<void> {
  const { failback } = await callApi<{ failback: FailoverRow }>(config, `mutation { failback { ${FAILOVER_FIELDS} } }`);
  report(failback, output);
}

export async function rejoinCommand(config: RelevoConfig, options: { name: string }, output: Output): Promise<void> {
  const { rejoinNode } = await callApi<{ rejoinNode: string }>(config, `mutation($name: String!) { rejoinNode(name: $name) }`, {
    name: options.name,
  });
  output.out(`${options.name} rejoined as a replica (${rejoinNode})`);
}

export async function maintenanceCommand(config: RelevoConfig, options: { mode: string }, output: Output): Promise<void> {
  if (options.mode !== "on" && options.mode !== "off")
    throw new RelevoError(ErrorCode.BadUserInput, `unknown maintenance mode "${options.mode}": use on or off`);
  const { setMaintenance } = await callApi<{ setMaintenance: boolean }>(
    config,
    `mutation($enabled: Boolean!) { setMaintenance(enabled: $enabled) }`,
    {
      enabled: options.mode === "on",
    },
  );
  output.out(
    setMaintenance
      ? "maintenance on: no automatic failover, rejoin or failback"
      : "maintenance off: automatic failover, rejoin and failback resume",
  );
}

export async function replicaCommand(config: RelevoConfig, options: { action: string; name: string }, output: Output): Promise<void> {
  if (options.action === "add") {
    const { addReplica } = await callApi<{ addReplica: { name: string; port: number } }>(
      config,
      `mutation($name: String!) { addReplica(name: $name) { name port } }`,
      {
        name: options.name,
      },
    );
    output.out(`${addReplica.name} added as a streaming replica on port ${addReplica.port}`);
    return;
  }
  if (options.action === "remove") {
    await callApi<{ removeReplica: boolean }>(config, `mutation($name: String!) { removeReplica(name: $name) }`, { name: options.name });
    output.out(`${options.name} removed: stopped, its data and its slot deleted`);
    return;
  }
  throw new RelevoError(ErrorCode.BadUserInput, `unknown replica action "${options.action}": use add or remove`);
}
