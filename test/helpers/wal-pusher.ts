import { configKeys } from "../../src/config/config-keys";
import { createLogger } from "../../src/log";
import type { Repository } from "../../src/storage/repository";
import { WalPusher } from "../../src/wal/wal-pusher";
import { pushedArchiveIdentity } from "../../src/wal/archive-identity";
import type { TimelineStep } from "../../src/postgres/timelines";
import type { EventLog } from "../../src/events/event-log";
import { WalSummarizer } from "../../src/wal/wal-summary";

/**
 * A pusher from the repository's receiving directory into its archive
 * objects, run by hand (pushPending) in tests; the primary's timeline
 * history `primaryHistory` (default: none known, so histories are held).
 */
export function pusherFor(
  repository: Repository,
  options: {
    primaryHistory?: () => readonly TimelineStep[] | null;
    /** Where refusals are reported (default: nowhere). */
    events?: Pick<EventLog, "emit">;
    now?: () => number;
  } = {},
): WalPusher {
  return new WalPusher({
    source: repository.spool,
    objects: repository.objects,
    generation: repository.generation,
    index: repository.archive,
    archiveKey: () => repository.archiveKey(),
    archiveIdentity: async () => (await pushedArchiveIdentity(repository))?.systemIdentifier ?? null,
    primaryHistory: options.primaryHistory ?? (() => null),
    events: options.events ?? { emit: () => Promise.resolve(null) },
    ...(options.now ? { now: options.now } : {}),
    logger: createLogger({ level: "silent" }),
    intervalMs: 60_000,
    parallelism: 3,
  });
}

/** A summarizer of the repository's spool, run by hand in tests (its periodic pass an hour apart), pg_waldump scratch in `scratchDir`. */
export function summarizerFor(repository: Repository, scratchDir: string): WalSummarizer {
  return new WalSummarizer({
    archive: repository.spool,
    index: repository.archive,
    objects: repository.objects,
    generation: repository.generation,
    archiveKey: () => repository.archiveKey(),
    readLegacy: true,
    scratchDir,
    pgBinDir: configKeys.pgBinDir.default,
    logger: createLogger({ level: "silent" }),
    intervalMs: 60_000,
  });
}
