import path from "node:path";
import { Readable } from "node:stream";
import { buffer } from "node:stream/consumers";
import { ErrorCode, RelevoError } from "../errors";
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
   * Sets `names` aside under `folder` (see divergedFolder), so that neither
   * a restore nor the pusher takes them for the cluster's WAL. Each file is
   * first copied to `diverged/<folder>/<name>` (from the archive's object,
   * else the received file; a `.partial`, never pushed, from the received
   * file): that copy is what is set aside. Then the archive's object and
   * the received file are removed (the object deleted, with the segment's
   * WAL summary; the received file removed from the spool), each only while
   * its content is the copy's. Objects first, received files last. Only
   * what cannot be read as a file (a link or a non-file planted at the
   * name) is moved under the spool's `diverged/<folder>/` as it is,
   * through the directory's handles: the spool keeps no second copy of
   * what the repository holds (review 23, §10: that copy was outside the
   * spool's size budget and never removed).
   *
   * Why: run again with the same `folder` (a failover resumed after a
   * failure partway, see setAsideReusedTimelines), it finishes what is left
   * and never touches a file of the same name the cluster has written since
   * (a reused timeline's new branch, pushed or received after the first
   * run): its content is not the copy's. The summary goes with the object:
   * a reused name is summarised again from its new branch, never taken as
   * summarised by the abandoned one. A name in neither place is skipped.
   */
  async setAside(names: readonly string[], folder: readonly string[]): Promise<{ readonly path: string; readonly moved: string[] }> {
    const { receiving, objects, generation, index } = this.options;
    const time = folder.at(-1)!;
    const dataKey = await this.options.archiveKey();
    const moved = new Set<string>();
    const receivedToMove: string[] = [];
    const receivedToRemove: string[] = [];
    for (const name of names) {
      const partial = isPartialName(name);
      if (!isWalFileName(name) && !partial) {
        receivedToMove.push(name);
        continue;
      }
      const key = archiveKey(generation, name.replace(/\.partial$/, ""));
      const asideKey = divergedKey(generation, time, name);
      const archived = partial ? null : await this.readObject(key);
      const received = await receiving.read(name).catch((error: unknown) => {
        // A link or a non-file planted at the name (never read, never followed): moved out of the way as it is.
        if (error instanceof RelevoError && error.code === ErrorCode.DataDirNotOurs) receivedToMove.push(name);
        else throw error;
        return null;
      });
      let copy = await this.readObject(asideKey);
      if (copy === null) {
        copy = archived ?? received;
        if (copy === null) continue;
        await objects.putStream(asideKey, Readable.from([copy]), { dataKey });
      }
      const archivedIsCopy = archived?.equals(copy) === true;
      const receivedIsCopy = received?.equals(copy) === true;
      if (isSegmentName(name) && (archivedIsCopy || receivedIsCopy)) {
        await objects.store.delete([walSummaryKey(generation, name), legacyWalSummaryKey(generation, name)]);
      }
      if (archivedIsCopy) {
        await objects.store.delete([key]);
        index.removed(name);
        moved.add(name);
      }
      if (receivedIsCopy) receivedToRemove.push(name);
    }
    // First what cannot be read (a planted diverged/ link refuses it before any received file is removed).
    const objectsAside = path.posix.join(objects.location, "diverged", time);
    const local = receivedToMove.length > 0 ? await receiving.setAside(receivedToMove, folder) : null;
    for (const name of local?.moved ?? []) moved.add(name);
    // The repository holds each of these under diverged/ now (put, or found there): the spool's copy goes.
    for (const name of receivedToRemove) {
      await receiving.remove(name);
      moved.add(name);
    }
    return { path: local ? `${local.path} and ${objectsAside}` : objectsAside, moved: [...moved].sort() };
  }

  private async readObject(key: string): Promise<Buffer | null> {
    const content = await absentAsNull(this.options.objects.getStream(key));
    return content && buffer(content);
  }
}

function isPartialName(name: string): boolean {
  return /^[0-9A-F]{24}\.partial$/.test(name) && isSegmentName(name.slice(0, 24));
}

function isSegmentName(name: string): boolean {
  return parseSegmentName(name) !== null;
}
