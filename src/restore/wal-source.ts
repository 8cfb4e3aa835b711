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
  return repositoriesWalSource([repository], receiving);
}

type ArchiveReader = Pick<Repository, "archive" | "objects" | "generation">;

/**
 * repositoryWalSource over several repositories (a RepositorySet's, in the
 * order given): what any of them holds is listed, and each file is read
 * from the first that holds it, falling back to the next when it is
 * missing there or its object fails its check. A check fails as the
 * stream is read (the feeder writes it): the repository is then skipped
 * for that file, and the feeder's retry reads the next one's copy. The
 * receiving directory comes last, as it does for one repository.
 */
export function repositoriesWalSource(repositories: readonly ArchiveReader[], receiving: WalArchive | null): WalSource {
  const received = receiving ? archiveWalSource(receiving) : null;
  /** Per file, the repositories (by position) whose copy failed as it was read: not read again for it. */
  const failedCopies = new Map<string, Set<number>>();
  const fromRepositories = async (name: string): Promise<Readable | null> => {
    let failure: Error | null = null;
    for (const [position, repository] of repositories.entries()) {
      if (failedCopies.get(name)?.has(position)) continue;
      let stream: Readable | null;
      try {
        stream = await absentAsNull(repository.objects.getStream(archiveKey(repository.generation, name)));
      } catch (error) {
        failure = error as Error;
        continue;
      }
      if (stream === null) continue;
      stream.once("error", () => {
        const failed = failedCopies.get(name) ?? new Set<number>();
        failed.add(position);
        // Every copy failed once: each is tried again (a store that failed may answer now).
        failedCopies.set(name, failed.size >= repositories.length ? new Set() : failed);
      });
      return stream;
    }
    // None could be read though one failed: the caller sees why (the feeder logs it and retries), never "expired".
    if (failure !== null) throw failure;
    return null;
  };
  return {
    list: async () => {
      const archived = new Set<string>();
      for (const repository of repositories) for (const name of await repository.archive.names()) archived.add(name);
      const local = received ? await received.list() : { names: [], receiving: [] };
      return {
        names: [...new Set([...archived, ...local.names])].sort(),
        receiving: local.receiving.filter((name) => !archived.has(name)),
      };
    },
    fetch: async (name) =>
      // Not pushed (yet, or expired since listed): what the receiving directory has, if anything.
      (await fromRepositories(name)) ?? (received ? received.fetch(name) : null),
  };
}
