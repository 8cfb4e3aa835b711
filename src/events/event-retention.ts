import type { PrimaryDatabase } from "../db/primary-database";

/** Rows deleted per statement: short transactions, no long lock on a table the consolidator writes every second. */
const PRUNE_BATCH = 5000;

/**
 * Deletes the `events` rows that occurred before `olderThan`
 * (RELEVO_EVENTS_RETENTION ago), a batch per statement, and says how many.
 * Only the consolidated history is pruned: the Redis stream has its own
 * bound, and backup and failover records (tables `backups`, `failovers`)
 * are kept, whatever the age of the events that carried them.
 */
export async function pruneEvents(database: PrimaryDatabase, options: { olderThan: Date; batchSize?: number }): Promise<number> {
  const prisma = await database.client();
  const batch = options.batchSize ?? PRUNE_BATCH;
  let deleted = 0;
  for (;;) {
    // The index on occurred_at (migration 20261206000000) keeps each batch from reading the whole table.
    const count = await prisma.$executeRaw`
      DELETE FROM events WHERE id IN (SELECT id FROM events WHERE occurred_at < ${options.olderThan} ORDER BY occurred_at LIMIT ${batch})`;
    deleted += count;
    if (count < batch) return deleted;
  }
}
