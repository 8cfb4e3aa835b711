import type { Readable } from "node:stream";
import type { WalArchive } from "../storage/wal-archive";
import { deliverableNames, receivingNames } from "./wal-feed-plan";

/**
 * Where a WalFeeder gets the WAL it writes into a node's directory. Today
 * the repository's `wal/` archive (archiveWalSource); the object store's
 * `archive/` later, behind the same two calls.
 */
export interface WalListing {
  readonly names: readonly string[];
  readonly receiving: readonly string[];
}

export interface WalSource {
  /**
   * The segments and histories it can deliver, under the names a node asks
   * for (see deliverableNames), and which of them are still being received
   * (receivingNames).
   */
  list(): Promise<WalListing>;
  /** A file's content, streamed; null when it is not there (expired since it was listed). */
  fetch(name: string): Promise<Readable | null>;
}

/**
 * The legacy archive as a source, read by root through WalArchive's
 * guarded handles (never through a link the archive's owner planted). A
 * segment without its complete file is served from its `.partial`.
 */
export function archiveWalSource(archive: WalArchive): WalSource {
  const open = async (name: string): Promise<Readable | null> => {
    const held = await archive.openFiles([name]);
    const file = held.files[0];
    if (!file) {
      await held.close();
      return null;
    }
    // The stream owns the handle from here: it closes it at its end, on an error, or when destroyed.
    return file.createReadStream({ highWaterMark: 1024 * 1024, autoClose: true });
  };
  return {
    list: async () => {
      const names = await archive.names();
      return { names: deliverableNames(names), receiving: receivingNames(names) };
    },
    fetch: async (name) => (await open(name)) ?? (name.endsWith(".history") ? null : open(`${name}.partial`)),
  };
}
