import { open, type FileHandle } from "node:fs/promises";
import { parseSegmentName } from "../postgres/wal-names";
import type { HeldWalFiles, WalArchive } from "../storage/wal-archive";
import type { FetchedSegment, FetchedSegments } from "./fetched-segments";

/**
 * The files pg_waldump reads for a summary: each from the spool, through
 * its guarded handle (see WalArchive.openFiles), else (a complete segment
 * pushed and gone from the spool: lost, wiped, trimmed, or a legacy wal/
 * drained) fetched from the archive's object into root's scratch (see
 * FetchedSegments). A `.partial` is only ever the spool's. A link or
 * another non-file planted in the spool is an error, never replaced by
 * the object: the summary says why it is incomplete. A failure to fetch
 * from the archive is an ArchiveFetchFailed: not the WAL's fault, so no
 * summary is stored for it (see WalSummarizer.summarize).
 */
export class SummarySegments {
  constructor(
    private readonly spool: WalArchive,
    private readonly fetched: FetchedSegments,
  ) {}

  /** The files `names`, in order, open; null where neither the spool nor the archive has one. Held until `close`. */
  async open(names: readonly string[]): Promise<HeldWalFiles> {
    const spooled = await this.spool.openFiles(names);
    const files = [...spooled.files];
    const held: FetchedSegment[] = [];
    const opened: FileHandle[] = [];
    const close = async (): Promise<void> => {
      for (const file of opened) await file.close();
      for (const segment of held) segment.release();
      await spooled.close();
    };
    try {
      const absent = names.filter((name, index) => files[index] === null && parseSegmentName(name) !== null);
      if (absent.length > 0) {
        for (const segment of await this.fetched.acquire(absent)) if (segment) held.push(segment);
        for (const segment of held) {
          const file = await open(segment.file, "r");
          opened.push(file);
          files[names.indexOf(segment.name)] = file;
        }
      }
    } catch (error) {
      await close();
      throw new ArchiveFetchFailed(error);
    }
    return { files, close };
  }

  /** The scratch directory made (0700), what dead processes left there removed, once (see FetchedSegments.prepare). */
  prepareScratch(): Promise<void> {
    return this.fetched.prepare();
  }

  /** Removes the fetched segments no summary holds now (see FetchedSegments.clear). */
  clear(): Promise<void> {
    return this.fetched.clear();
  }
}

/** Fetching segments from the repository's archive failed (unavailable, corrupt, scratch full): `cause` says how. */
export class ArchiveFetchFailed extends Error {
  constructor(override readonly cause: unknown) {
    super(cause instanceof Error ? cause.message : String(cause), { cause });
    this.name = "ArchiveFetchFailed";
  }
}
