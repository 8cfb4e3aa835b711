import type { Readable } from "node:stream";
import { archiveKey } from "../repository/repository-layout";
import { absentAsNull } from "../repository/repository-store";
import type { Repository } from "../storage/repository";
import type { WalArchive } from "../storage/wal-archive";
import { deliverableNames, receivingNames } from "./wal-feed-plan";

/**
 * Where a WalFeeder gets the WAL it writes into a node's directory: the
 * repository's archive objects (repositoryWalSource), with what the
 * archiver received and has not pushed yet.
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

/**
 * The repository's archive (`archive/…`, listed through its WalIndex,
 * each file streamed from the store) as a source, with what `receiving`
 * (the directory pg_receivewal writes, read through its guarded handles;
 * null where this process has none) holds and the archive not yet: a
 * segment received and not pushed, and the `.partial` being received,
 * which only the receiving host has (a restore "to the latest" elsewhere
 * ends at the last pushed segment).
 */
export function repositoryWalSource(
  repository: Pick<Repository, "archive" | "objects" | "generation">,
  receiving: WalArchive | null,
): WalSource {
  const received = receiving ? archiveWalSource(receiving) : null;
  return {
    list: async () => {
      const archived = await repository.archive.names();
      const local = received ? await received.list() : { names: [], receiving: [] };
      const held = new Set(archived);
      return {
        names: [...new Set([...archived, ...local.names])].sort(),
        receiving: local.receiving.filter((name) => !held.has(name)),
      };
    },
    fetch: async (name) =>
      // Not pushed (yet, or expired since listed): what the receiving directory has, if anything.
      (await absentAsNull(repository.objects.getStream(archiveKey(repository.generation, name)))) ??
      (received ? received.fetch(name) : null),
  };
}
