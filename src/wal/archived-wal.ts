import path from "node:path";
import { Readable } from "node:stream";
import { buffer } from "node:stream/consumers";
import { historyFileName, parseSegmentName } from "../postgres/wal-names";
import { archiveKey, divergedKey, legacyWalSummaryKey, walSummaryKey } from "../repository/repository-layout";
import { absentAsNull, type DataKeySource, type RepositoryStore } from "../repository/repository-store";
import type { WalArchive } from "../storage/wal-archive";
import type { WalIndex } from "./wal-index";
import { isWalFileName } from "../restore/wal-feed-plan";

export interface ArchivedWalOptions {
  /** The directory pg_receivewal writes (root works there through guarded handles). */
  readonly receiving: WalArchive;
  readonly objects: RepositoryStore;
  readonly generation: number;
  readonly index: WalIndex;
  /** What added histories and diverged WAL are written under (the repository's archive key). */
  readonly archiveKey: DataKeySource;
}

/**
 * The cluster's WAL as the archiver and failover see it: what the
 * repository's archive objects hold (`archive/…`, through its index) and
 * what pg_receivewal received and the pusher has not put yet. Where
 * pg_receivewal resumes, which files are off the primary's history, which
 * timelines a promotion must not reuse: all are decided over both, so a
 * receiving directory lost alone (wiped, another host) never makes the
 * archive resume before its end or forget a branch.
 *
 * Objects have no rename: a set-aside is get, put under
 * `diverged/<time>/`, delete (repository-layout's divergedKey).
 */
export class ArchivedWal {
  constructor(private readonly options: ArchivedWalOptions) {}

  /** Every name received or archived (segments, .partial, .history …), sorted. */
  async names(): Promise<string[]> {
    const { receiving, index } = this.options;
    return [...new Set([...(await receiving.names()), ...(await index.names())])].sort();
  }

  /** A file's content: the archive's object, else the received file; null when neither has it. */
  async read(name: string): Promise<Buffer | null> {
    const archived = isWalFileName(name) ? await this.readObject(archiveKey(this.options.generation, name)) : null;
    return archived ?? this.options.receiving.read(name);
  }

  /** Timeline `timeline`'s history, archived or received; null when neither has it. */
  async readHistory(timeline: number): Promise<string | null> {
    return (await this.read(historyFileName(timeline)))?.toString("utf8") ?? null;
  }

  /**
   * The first `bytes` of a segment (its page header): a range read of the
   * archive's object, else the received file's start; null when neither
   * has it.
   */
  async readStart(name: string, bytes: number): Promise<Buffer | null> {
    const { objects, generation, receiving } = this.options;
    if (isWalFileName(name)) {
      const reader = await absentAsNull(objects.openReader(archiveKey(generation, name)));
      if (reader) return reader.contentSize < bytes ? null : reader.read({ start: 0, end: bytes });
    }
    return receiving.read(name, { maxBytes: bytes });
  }

  /**
   * Adds a timeline history (one written outside pg_receivewal, see
   * copyNewerHistories) to the archive and the receiving directory, unless
   * one of that name is there: an archived history is its timeline's own
   * and never replaced (head, then put).
   */
  async addHistory(timeline: number, content: string): Promise<"added" | "present"> {
    const { receiving, objects, generation, index } = this.options;
    const name = historyFileName(timeline);
    const key = archiveKey(generation, name);
    const received = await receiving.addHistory(timeline, content);
    if (await objects.exists(key)) return received;
    await objects.putStream(key, Readable.from([Buffer.from(content, "utf8")]), { dataKey: await this.options.archiveKey() });
    index.added(name);
    return "added";
  }

  /**
   * Sets `names` aside under `folder` (see divergedFolder): in the archive
   * got, put under `diverged/<folder>/` and deleted, with the segment's
   * WAL summary deleted, then moved in the receiving directory (through its
   * handles), so neither a restore nor the pusher takes them for the
   * cluster's WAL. Objects first: a failure partway leaves the received
   * files where they were, the set-aside to be run again (names done are
   * skipped), never an archive holding the old branch under names whose
   * received copies are gone. The summary goes before the segment: a
   * segment of the same name on a reused timeline is summarised again from
   * its own WAL, never taken as summarised by the abandoned branch's. A
   * name in neither is skipped.
   */
  async setAside(names: readonly string[], folder: readonly string[]): Promise<{ readonly path: string; readonly moved: string[] }> {
    const { receiving, objects, generation, index } = this.options;
    const moved = new Set<string>();
    const time = folder.at(-1)!;
    const dataKey = await this.options.archiveKey();
    for (const name of names) {
      if (!isWalFileName(name)) continue; // a .partial is never pushed
      const key = archiveKey(generation, name);
      const content = await absentAsNull(objects.getStream(key));
      if (content !== null) await objects.putStream(divergedKey(generation, time, name), content, { dataKey });
      if (isSegmentName(name)) await objects.store.delete([walSummaryKey(generation, name), legacyWalSummaryKey(generation, name)]);
      if (content === null) continue;
      await objects.store.delete([key]);
      index.removed(name);
      moved.add(name);
    }
    const local = await receiving.setAside(names, folder);
    for (const name of local.moved) moved.add(name);
    return { path: `${local.path} and ${path.posix.join(objects.location, "diverged", time)}`, moved: [...moved].sort() };
  }

  private async readObject(key: string): Promise<Buffer | null> {
    const content = await absentAsNull(this.options.objects.getStream(key));
    return content && buffer(content);
  }
}

function isSegmentName(name: string): boolean {
  return parseSegmentName(name) !== null;
}
