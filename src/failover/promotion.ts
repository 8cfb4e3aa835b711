import { ErrorCode, RelevoError } from "../errors";
import type { NodeRef } from "../nodes/node-driver";
import { withNodeClient } from "../postgres/connection";
import type { NodeFacts } from "../postgres/node-facts";
import { sleep } from "../util/sleep";
import {
  configureStoppedStandby,
  ensureReservedSlot,
  repointRunningStandby,
  setSynchronousStandbys,
  slotNameFor,
} from "../postgres/replication-config";
import { initialState, without } from "./cluster-state";
import type { OperationContext } from "./operation-context";
import type { RunningOperation } from "./operation-journal";
import { recordPrimaryLsn } from "./primary-lsn";
import { monotonicNowMs } from "../util/monotonic-clock";

export interface PromoteOptions {
  /**
   * Standbys the new primary's commits wait for from its very first one,
   * recorded as the synchronous set and as eligible in the same state write
   * as the new primary. Only for standbys that hold everything `target`
   * holds and already stream from it: the cleanly stopped old primary of a
   * switchover. Empty (a failover): commits wait for nobody until the
   * monitor adds standbys back as they catch up.
   */
  readonly commitsWaitFor?: readonly string[];
}

/**
 * Promotes `target` (idempotent: a node already out of recovery is not
 * promoted again), with its synchronous standbys set before `pg_promote`,
 * records it as the primary the moment it is out of recovery, clears what it
 * inherited of the old primary's standby settings, and checks it accepts
 * writes. Returns whether this call promoted it (it was in recovery before)
 * and the timeline it is on.
 */
export async function promote(
  context: OperationContext,
  target: NodeRef,
  operation: RunningOperation,
  options: PromoteOptions = {},
): Promise<{ readonly promotedNow: boolean; readonly timeline: number | null }> {
  const { deps } = context;
  const waitFor = [...(options.commitsWaitFor ?? [])].sort();
  operation.assertHeld();
  const before = await context.facts(target);
  await withNodeClient(target, deps.superuser, Math.max(deps.config.startTimeoutMs, 60000), async (client) => {
    const inRecovery = (await client.query<{ r: boolean }>("SELECT pg_is_in_recovery() AS r")).rows[0]!.r;
    if (inRecovery) {
      // Written (ALTER SYSTEM works on a standby, where the setting waits
      // unused) and loaded before the promotion: the first commit of the new
      // timeline already waits for them. Set afterwards, commits acknowledged
      // in between would be held by this node alone.
      await setSynchronousStandbys(client, waitFor);
      const promoted = (await client.query<{ ok: boolean }>("SELECT pg_promote(true, 60) AS ok")).rows[0]!.ok;
      if (!promoted) throw new RelevoError(ErrorCode.Timeout, `${target.name} did not finish promotion within 60 s`);
    }
    // Recorded at once: it may acknowledge commits from now on, and should it
    // die the next moment, a failover must know it as the primary to replace.
    const lsn = (await client.query<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn")).rows[0]!.lsn;
    // Its first known LSN: the loss bound should it die before the monitor's first check of it.
    await recordPrimaryLsn(deps.redis, deps.keys.primaryLsn, target.name, lsn);
    await recordAsPrimary(context, operation, target, waitFor);
    // Again after it (idempotent), for a node found promoted already.
    await setSynchronousStandbys(client, waitFor);
    await client.query("ALTER SYSTEM RESET primary_conninfo");
    await client.query("ALTER SYSTEM RESET primary_slot_name");
    await client.query("ALTER SYSTEM RESET default_transaction_read_only");
    await client.query("SELECT pg_reload_conf()");
  });
  const facts = await writableWithin(context, target, WRITABLE_TIMEOUT_MS);
  if (!facts) throw new RelevoError(ErrorCode.CommandFailed, `${target.name} does not accept writes after promotion`);
  // A promotion starts a new timeline; the same one means the node was already a primary of its own.
  if (before?.inRecovery && before.timeline !== null && facts.timeline !== null && facts.timeline <= before.timeline) {
    throw new RelevoError(ErrorCode.CommandFailed, `${target.name} is on timeline ${facts.timeline} after promotion, not on a new one`);
  }
  return { promotedNow: before?.inRecovery === true, timeline: facts.timeline };
}

/**
 * The new primary, the standbys its commits wait for as the synchronous set,
 * and the same as eligible, in one state write: no moment where the new
 * primary is recorded but the standby its commits wait for is not known to
 * hold them.
 */
export async function recordAsPrimary(
  context: OperationContext,
  operation: RunningOperation,
  target: NodeRef,
  waitFor: readonly string[],
): Promise<void> {
  await context.deps.store.update(operation.guard, (state) => {
    const base = state ?? initialState(target.name);
    if (base.primary === target.name) return base;
    return {
      ...base,
      primary: target.name,
      epoch: base.epoch + 1,
      syncSet: [...waitFor],
      eligible: [...waitFor],
      joining: {},
      fenced: without(base.fenced, target.name),
    };
  });
}

/**
 * How long a promoted node has to show it accepts writes: a reload reaches
 * new sessions only once the postmaster has read it, and a loaded machine
 * may miss one check's deadline.
 */
const WRITABLE_TIMEOUT_MS = 10000;

async function writableWithin(context: OperationContext, node: NodeRef, timeoutMs: number): Promise<NodeFacts | null> {
  const deadline = monotonicNowMs() + timeoutMs;
  for (;;) {
    const facts = await context.facts(node);
    if (facts && !facts.inRecovery && !facts.readOnly) return facts;
    // A server that is not running will not accept writes: waiting out the deadline would only hold back the failover that takes over.
    if (facts === null && (await context.deps.driver.state(node)).phase === "stopped") return null;
    if (monotonicNowMs() >= deadline) return null;
    await sleep(50);
  }
}

/**
 * Every other node's slot on the new primary first (so none finds its WAL
 * gone, the old primary's included: it rejoins over it), then the running
 * replicas repointed; stopped ones are configured to follow it when started.
 */
export async function followNewPrimary(context: OperationContext, primary: NodeRef, options: { skip: readonly string[] }): Promise<void> {
  const { deps } = context;
  const others = deps.membership.nodes.filter((node) => node.name !== primary.name);
  await withNodeClient(primary, deps.superuser, deps.config.nodeTimeoutMs, async (client) => {
    for (const node of others) await ensureReservedSlot(client, slotNameFor(node));
  });
  const state = await context.state();
  for (const node of others) {
    if (options.skip.includes(node.name) || state.fenced.includes(node.name)) continue;
    try {
      const facts = await context.facts(node);
      if (facts?.inRecovery) {
        await withNodeClient(node, deps.superuser, deps.config.nodeTimeoutMs, (client) =>
          repointRunningStandby(client, node, primary, deps.secrets.replicationPassword, deps.driver.tlsPaths(node).ca),
        );
      } else if (facts === null && (await deps.driver.state(node)).phase === "stopped") {
        await configureStoppedStandby(deps.driver, node, primary, deps.secrets.replicationPassword);
      }
    } catch (error) {
      deps.logger.warn({ node: node.name, err: (error as Error).message }, "replica not repointed; it rejoins later");
    }
  }
}
