import { ErrorCode, RelevoError } from "../errors";
import type { NodeRef } from "../nodes/node-driver";
import { withNodeClient } from "../postgres/connection";
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

/**
 * Promotes `target` (idempotent: a node already out of recovery is not
 * promoted again), clears what it inherited of the old primary's
 * synchronous and standby settings, checks it accepts writes, and records it
 * as the primary.
 */
export async function promote(context: OperationContext, target: NodeRef, operation: RunningOperation): Promise<void> {
  const { deps } = context;
  operation.assertHeld();
  const before = await context.facts(target);
  await withNodeClient(target, deps.superuser, Math.max(deps.config.startTimeoutMs, 60000), async (client) => {
    const inRecovery = (await client.query<{ r: boolean }>("SELECT pg_is_in_recovery() AS r")).rows[0]!.r;
    if (inRecovery) {
      const promoted = (await client.query<{ ok: boolean }>("SELECT pg_promote(true, 60) AS ok")).rows[0]!.ok;
      if (!promoted) throw new RelevoError(ErrorCode.Timeout, `${target.name} did not finish promotion within 60 s`);
    }
    // Commits must not wait for standbys that follow nobody yet; the
    // monitor adds them back as they catch up.
    await setSynchronousStandbys(client, []);
    await client.query("ALTER SYSTEM RESET primary_conninfo");
    await client.query("ALTER SYSTEM RESET primary_slot_name");
    await client.query("ALTER SYSTEM RESET default_transaction_read_only");
    await client.query("SELECT pg_reload_conf()");
  });
  const facts = await context.facts(target);
  if (!facts || facts.inRecovery || facts.readOnly)
    throw new RelevoError(ErrorCode.CommandFailed, `${target.name} does not accept writes after promotion`);
  // A promotion starts a new timeline; the same one means the node was already a primary of its own.
  if (before?.inRecovery && before.timeline !== null && facts.timeline !== null && facts.timeline <= before.timeline) {
    throw new RelevoError(ErrorCode.CommandFailed, `${target.name} is on timeline ${facts.timeline} after promotion, not on a new one`);
  }
  // The new primary's first known LSN: the loss bound should it die before the monitor's first check of it.
  if (facts.lsn) await recordPrimaryLsn(deps.redis, deps.keys.primaryLsn, target.name, facts.lsn);
  await deps.store.update(operation.guard, (state) => {
    const base = state ?? initialState(target.name);
    if (base.primary === target.name) return base;
    return {
      ...base,
      primary: target.name,
      epoch: base.epoch + 1,
      syncSet: [],
      eligible: [],
      joining: {},
      fenced: without(base.fenced, target.name),
    };
  });
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
          repointRunningStandby(client, node, primary, deps.secrets.replicationPassword),
        );
      } else if (facts === null && (await deps.driver.state(node)).phase === "stopped") {
        await configureStoppedStandby(deps.driver, node, primary, deps.secrets.replicationPassword);
      }
    } catch (error) {
      deps.logger.warn({ node: node.name, err: (error as Error).message }, "replica not repointed; it rejoins later");
    }
  }
}
