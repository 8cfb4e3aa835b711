import type { PrimaryDatabase } from "../db/primary-database";

/** Rows deleted per statement: short transactions, no long lock on a table the consolidator writes every second. */
const PRUNE_BATCH = 5000;

/**
 * Where retention cuts: events that occurred before it go. `now` minus the
 * retention, but never later than the newest consolidated event minus the
 * retention: a wall clock stepped forward past the retention would
 * otherwise take the whole history at the next run. The floor holds while
 * the events consolidated were stamped before the step; events stamped by
 * the stepped clock carry it into the floor (a clock that stays wrong is
 * its operator's to correct). A quiet cluster, whose newest event is old,
 * keeps that much longer than the retention. null: nothing to prune (no
 * events). Pure.
 */
export function retentionCutoff(options: {
  readonly now: Date;
  readonly retentionMs: number;
  readonly newestEvent: Date | null;
}): Date | null {
  if (options.newestEvent === null) return null;
  return new Date(Math.min(options.now.getTime(), options.newestEvent.getTime()) - options.retentionMs);
}

/**
 * Deletes the `events` rows past their retention (RELEVO_EVENTS_RETENTION,
 * cut where retentionCutoff says), a batch per statement, and says how many
 * and where it cut. Only the consolidated history is pruned: the Redis
 * stream has its own bound, and backup and failover records (tables
 * `backups`, `failovers`) are kept, whatever the age of the events that
 * carried them.
 */
export async function pruneEvents(
  database: PrimaryDatabase,
  options: { readonly now: Date; readonly retentionMs: number; readonly batchSize?: number },
): Promise<{ deleted: number; cutoff: Date | null }> {
  const prisma = await database.client();
  const batch = options.batchSize ?? PRUNE_BATCH;
  const newest = await prisma.event.findFirst({ orderBy: { occurredAt: "desc" }, select: { occurredAt: true } });
  const cutoff = retentionCutoff({ now: options.now, retentionMs: options.retentionMs, newestEvent: newest?.occurredAt ?? null });
  if (cutoff === null) return { deleted: 0, cutoff };
  let deleted = 0;
  for (;;) {
    // The index on occurred_at (migration 20261206000000) keeps each batch from reading the whole table.
    const count = await prisma.$executeRaw`
      DELETE FROM events WHERE id IN (SELECT id FROM events WHERE occurred_at < ${cutoff} ORDER BY occurred_at LIMIT ${batch})`;
    deleted += count;
    if (count < batch) return { deleted, cutoff };
  }
}
