import type { Client } from "pg";

/**
 * Whether the checkpointer has processed the last configuration reload, as
 * far as a checkpoint shows it. The checkpointer starts a checkpoint only
 * from its main loop, right after HandleCheckpointerInterrupts() has
 * processed a pending reload (ProcessConfigFile, then
 * UpdateSharedMemoryConfig, which sets what commits wait for); between that
 * and the checkpoint's timestamp (`checkPoint.time`, taken as
 * CreateCheckPoint begins) it reads the request flags and nothing more: no
 * wait on I/O or on another process. The postmaster loads the file (that is
 * `pg_conf_load_time()`, inherited by every session forked after it) and
 * signals the checkpointer at once, in the same handler.
 *
 * So a completed checkpoint that began more than a second after the load
 * began after the checkpointer had the reload pending, and so after it
 * processed it. `checkpoint_time` is truncated to whole seconds: a start in
 * the load's own second, or the next (10.999 and 11.000), may be the
 * checkpoint the checkpointer had already decided on; two seconds' difference
 * means at least one second in fact. Pure.
 */
export function checkpointFollowedReload(facts: { readonly reloadedAt: Date; readonly checkpointStartedAt: Date }): boolean {
  return Math.floor(facts.checkpointStartedAt.getTime() / 1000) >= Math.floor(facts.reloadedAt.getTime() / 1000) + 2;
}

/** How a confirmation went: a checkpoint since the reload was found, one was run, or neither (not allowed to run one). */
export type ReloadConfirmation = "found-checkpoint" | "checkpointed" | "unconfirmed";

/**
 * Confirms, on `client` (a session opened after the reload), that the
 * checkpointer has processed the last reload: a checkpoint that followed it
 * (checkpointFollowedReload) is enough; otherwise, when `mayCheckpoint`, a
 * CHECKPOINT (it returns once a checkpoint that started after the request
 * has finished, and the checkpointer processes a pending reload before
 * starting one).
 *
 * The session checks its client every second while the CHECKPOINT waits
 * (client_connection_check_interval): a caller that gives up ends the
 * connection, and the server ends the session at once rather than keep it
 * waiting, for minutes on a busy primary, for a checkpoint nobody awaits
 * (the checkpoint itself goes on: it is the checkpointer's).
 *
 * `checkpointIssued` is called right before the CHECKPOINT is sent: from
 * then on the server checkpoints whatever becomes of this call (it fails,
 * times out or is given up), so a caller that limits how often it asks
 * counts it from there, not from a CHECKPOINT that returned.
 */
export async function confirmReloadByCheckpoint(
  client: Client,
  options: { readonly mayCheckpoint: boolean; readonly checkpointIssued: () => void },
): Promise<ReloadConfirmation> {
  const { rows } = await client.query<{ reloadedAt: Date; checkpointStartedAt: Date }>(
    `SELECT pg_conf_load_time() AS "reloadedAt", (pg_control_checkpoint()).checkpoint_time AS "checkpointStartedAt"`,
  );
  if (checkpointFollowedReload(rows[0]!)) return "found-checkpoint";
  if (!options.mayCheckpoint) return "unconfirmed";
  await client.query("SET client_connection_check_interval = '1s'");
  options.checkpointIssued();
  await client.query("CHECKPOINT");
  return "checkpointed";
}
