import { waitForStreaming, writeManagedFiles, writeMarker } from "../cluster/bootstrap";
import { withClaimedTarget } from "../restore/target-claim";
import { ErrorCode, RelevoError } from "../errors";
import type { NodeRef } from "../nodes/node-driver";
import { withNodeClient } from "../postgres/connection";
import { conninfoString } from "../postgres/config-values";
import { libpqTlsParameters } from "../postgres/tls-settings";
import { readControlData, stoppedAsStandby } from "../postgres/control-data";
import { markFenced, removeFenceMarker } from "../postgres/fence-marker";
import { ROLE_REWIND } from "../postgres/managed-settings";
import { streamsFrom } from "../postgres/node-facts";
import { configureStoppedStandby, ensureReservedSlot, slotNameFor, STANDBY_SIGNAL } from "../postgres/replication-config";
import { StaleWriterError, initialState, without, type StateGuard } from "./cluster-state";
import { newEntry, type OperationContext } from "./operation-context";
import type { RunningOperation } from "./operation-journal";
import { destroyAndSeed } from "./seed-again";

export type RejoinMethod = "rewind" | "reseed" | "restart";

/** How long a restarted standby has to stream before it is rewound instead. */
const RESTART_STREAMING_TIMEOUT_MS = 30000;

export interface RejoinRequest {
  readonly trigger?: "automatic" | "manual";
  /** The monitor's lease (automatic rejoin): refused if it is no longer held. */
  readonly lease?: StateGuard | null;
}

/** Brings a fenced (or lost) node back as a replica of the primary: pg_rewind, else a fresh seed. */
export async function rejoin(context: OperationContext, name: string, request: RejoinRequest = {}): Promise<RejoinMethod> {
  const trigger = request.trigger ?? "manual";
  await context.refuseWhileBusy();
  const node = context.node(name);
  const state = await context.state();
  if (state.primary === node.name)
    throw new RelevoError(ErrorCode.PreconditionFailed, `${node.name} is the primary; it cannot rejoin as a replica`);
  const operation = await context.deps.journal.begin(
    newEntry({ kind: "rejoin", trigger, from: node.name, to: state.primary, reason: `${trigger} rejoin` }),
    request.lease ?? null,
  );
  return context.tracked(operation, () => runRejoin(context, operation));
}

/** Runs (or resumes) a rejoin from its journal. */
export async function runRejoin(context: OperationContext, operation: RunningOperation): Promise<RejoinMethod> {
  const { deps } = context;
  const name = operation.entry.from;
  const started = Date.now();
  try {
    const node = context.node(name);
    const primary = context.node((await context.state()).primary);
    let method: RejoinMethod;
    if (streamsFrom(await context.facts(node), primary)) {
      method = "restart";
    } else {
      await operation.record({ stage: "stopping" });
      operation.assertHeld();
      await context.stopQuietly(node);
      await withNodeClient(primary, deps.superuser, deps.config.nodeTimeoutMs, (client) => ensureReservedSlot(client, slotNameFor(node)));
      await operation.record({ stage: "rejoining" });
      operation.assertHeld();
      method = await rejoinStopped(context, operation, node, primary);
    }
    await deps.store.update(operation.guard, (state) => ({
      ...(state ?? initialState(primary.name)),
      fenced: without(state?.fenced ?? [], node.name),
    }));
    await operation.finish();
    await deps.events.emit({
      kind: "node:rejoined",
      severity: "info",
      node: node.name,
      message: `${node.name} rejoined as a replica of ${primary.name} (${method})`,
      data: { method, upstream: primary.name, durationMs: Date.now() - started },
    });
    await deps.refreshTopology().catch(() => undefined);
    return method;
  } catch (error) {
    return rejoinFailed(context, operation, error, `${name} did not rejoin`);
  }
}

/**
 * A rejoin (or reseed) that failed: over, its journal closed, a
 * `node:rejoin-failed` event saying `what` and why; rethrows. Another
 * instance's lock (StaleWriterError) is only let go: the operation is
 * theirs now.
 */
export async function rejoinFailed(context: OperationContext, operation: RunningOperation, error: unknown, what: string): Promise<never> {
  if (error instanceof StaleWriterError) throw error;
  await operation.finish().catch(() => undefined);
  const message = (error as Error).message;
  await context.deps.events.emit({
    kind: "node:rejoin-failed",
    severity: "critical",
    node: operation.entry.from,
    message: `${what}: ${message}`,
    data: { error: message },
  });
  throw error;
}

/** A cleanly stopped old primary restarted as a standby of `primary`; rewound if it cannot follow as it is. */
export async function restartAsStandby(
  context: OperationContext,
  operation: RunningOperation,
  node: NodeRef,
  primary: NodeRef,
): Promise<RejoinMethod> {
  if (streamsFrom(await context.facts(node), primary)) return "restart";
  await context.stopQuietly(node);
  return restartElseRewind(context, operation, node, primary, { streamingTimeoutMs: context.deps.config.startTimeoutMs });
}

/**
 * A stopped node back as a standby. One that was a standby (its control
 * file says recovery) holds a prefix of the primary's history: it is
 * restarted as it is. Running pg_rewind on it instead would first run crash
 * recovery outside standby mode, which ends with a checkpoint of its own on
 * the primary's timeline that the primary never wrote ("no rewind
 * required", and a standby that cannot stream). One that was a primary
 * (the fenced old primary) is rewound. If the restart does not stream, the
 * node is stopped cleanly (shut down in recovery) and rewound.
 */
async function rejoinStopped(
  context: OperationContext,
  operation: RunningOperation,
  node: NodeRef,
  primary: NodeRef,
): Promise<RejoinMethod> {
  const controlData = await readControlData(context.deps.driver, node, { allowFailure: true });
  if (!stoppedAsStandby(controlData)) return rewindOrReseed(context, operation, node, primary);
  return restartElseRewind(context, operation, node, primary, { streamingTimeoutMs: RESTART_STREAMING_TIMEOUT_MS });
}

/** A stopped node restarted as a standby of `primary`; rewound (else re-seeded) when it does not stream within `streamingTimeoutMs`. */
async function restartElseRewind(
  context: OperationContext,
  operation: RunningOperation,
  node: NodeRef,
  primary: NodeRef,
  options: { streamingTimeoutMs: number },
): Promise<RejoinMethod> {
  try {
    await startAsStandby(context, node, primary, options);
    return "restart";
  } catch (error) {
    context.deps.logger.warn(
      { node: node.name, err: (error as Error).message },
      "node does not stream after a restart as a standby: rewinding it",
    );
    return rewindOrReseed(context, operation, node, primary);
  }
}

/** Starts a stopped node as a standby of `primary` (see startStandby) and waits until it streams. */
async function startAsStandby(
  context: OperationContext,
  node: NodeRef,
  primary: NodeRef,
  options: { streamingTimeoutMs: number },
): Promise<void> {
  const { deps } = context;
  await startStandby(context, node, primary);
  await waitForStreaming(
    { config: { ...deps.config, startTimeoutMs: options.streamingTimeoutMs }, secrets: deps.secrets, trustedCa: deps.superuser.trustedCa },
    node,
  );
}

/**
 * Starts a stopped node as a standby of `upstream` over its slot there, without
 * waiting for it to stream: the slots it had as a primary cleared, conninfo
 * and standby.signal written, the fence lifted (standby.signal keeps it from
 * writing).
 */
export async function startStandby(context: OperationContext, node: NodeRef, upstream: NodeRef): Promise<void> {
  const { deps } = context;
  await clearSlots(context, node);
  await configureStoppedStandby(deps.driver, node, upstream, deps.secrets.replicationPassword);
  await removeFenceMarker(deps.driver, node);
  await deps.driver.start(node, { timeoutMs: deps.config.startTimeoutMs });
}

/**
 * pg_rewind against the primary, then the node's own files written again
 * (pg_rewind copies the source's configuration, marker included) and the
 * node started as a standby over its slot. When pg_rewind fails, the node
 * is seeded again from scratch (repository or pg_basebackup), recorded
 * first as being re-made (see destroyAndSeed): a seed that fails leaves it
 * to the monitor to seed again, never absent for good.
 */
async function rewindOrReseed(
  context: OperationContext,
  operation: RunningOperation,
  node: NodeRef,
  primary: NodeRef,
): Promise<RejoinMethod> {
  const { deps } = context;
  const { driver } = deps;
  await context.stopQuietly(node);
  // pg_rewind reads the source's timeline from its control file, which a
  // promotion updates only at the next checkpoint: without one, a freshly
  // promoted source looks like it is on the old timeline ("no rewind required").
  await withNodeClient(primary, deps.superuser, 5 * 60 * 1000, (client) => client.query("CHECKPOINT"));
  // pg_rewind's crash-recovery step refuses to run with a standby.signal.
  await driver.removeFiles(node, [STANDBY_SIGNAL, "recovery.signal"]);
  const rewind = await driver.exec(
    node,
    [
      "pg_rewind",
      "--target-pgdata",
      driver.dataDirectory(node),
      "--source-server",
      conninfoString({
        host: primary.host,
        port: primary.port,
        user: ROLE_REWIND,
        dbname: "postgres",
        connect_timeout: 5,
        ...libpqTlsParameters(driver.tlsPaths(node).ca),
      }),
    ],
    { mode: "offline", env: { PGPASSWORD: deps.secrets.rewindPassword }, allowFailure: true, timeoutMs: 30 * 60 * 1000 },
  );
  const output = `${rewind.stdout}\n${rewind.stderr}`.trim().split("\n").slice(-6).join(" | ");
  if (rewind.exitCode !== 0) {
    deps.logger.warn({ node: node.name, exitCode: rewind.exitCode, output }, "pg_rewind failed: seeding the node again");
    // The name claimed from the destroy on (see seedReplica).
    await withClaimedTarget(deps.driver, node, { purpose: `reseed ${node.name}` }, (claimed) =>
      destroyAndSeed(context, operation, node, primary, { claimed }),
    );
    return "reseed";
  }
  deps.logger.info({ node: node.name, output }, "pg_rewind finished");
  // pg_rewind removed the fence with the rest of the node's own files: back at once, until the node starts as a standby.
  await markFenced(driver, node, "rejoining");
  await writeMarker(deps.bootstrap, node);
  await writeManagedFiles(deps.bootstrap, node);
  await startAsStandby(context, node, primary, { streamingTimeoutMs: deps.config.startTimeoutMs });
  return "rewind";
}

/** A standby must not keep the slots it had as a primary: they would hold WAL back on it for ever. */
async function clearSlots(context: OperationContext, node: NodeRef): Promise<void> {
  const entries = await context.deps.driver.listFiles(node, "pg_replslot");
  const slots = entries.filter((entry) => entry.type === "directory" && !entry.path.slice("pg_replslot/".length).includes("/"));
  await context.deps.driver.removeFiles(
    node,
    slots.map((entry) => entry.path),
  );
}
