import { createLogger } from "../../src/log";
import type { Repository } from "../../src/storage/repository";
import { WalPusher } from "../../src/wal/wal-pusher";

/** A pusher from the repository's receiving directory into its archive objects, run by hand (pushPending) in tests. */
export function pusherFor(repository: Repository): WalPusher {
  return new WalPusher({
    source: repository.spool,
    objects: repository.objects,
    generation: repository.generation,
    index: repository.archive,
    archiveKey: () => repository.archiveKey(),
    logger: createLogger({ level: "silent" }),
    intervalMs: 60_000,
    parallelism: 3,
  });
}
