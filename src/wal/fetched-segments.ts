import { randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import { chmod, mkdir, readdir, rm } from "node:fs/promises";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import { archiveKey } from "../repository/repository-layout";
import { absentAsNull, type RepositoryStore } from "../repository/repository-store";

export interface FetchedSegmentsOptions {
  /** The archive's objects (`archive/<group>/<segment>`), each read through the codec: checked, and decrypted in an encrypted repository. */
  readonly objects: RepositoryStore;
  readonly generation: number;
  /** Root's scratch directory on this host (`$RELEVO_HOME/tmp`), made 0700: pg_waldump, run as root, reads the files there. */
  readonly scratchDir: string;
  /** At most this many segments in scratch at once, fetched or being fetched (16 MiB each); at least 2 (a segment and its successor). */
  readonly limit: number;
}

/** A segment held in scratch: its file, until `release`. */
export interface FetchedSegment {
  readonly name: string;
  readonly file: string;
  release(): void;
}

interface Entry {
  readonly name: string;
  /** The file, once fetched; null when the archive has no such object. */
  readonly fetched: Promise<string | null>;
  users: number;
  settled: boolean;
  lastUsed: number;
}

/** The prefix of every scratch file of this kind: `wal-fetch-<pid>-<random>-<segment>` (see leftoverScratch). */
const FETCH_PREFIX = "wal-fetch";

/**
 * Archived segments fetched from the repository's objects into files of
 * root's scratch directory, for pg_waldump (which reads files, and a
 * bucket has none) when the spool no longer has them. Streamed (never a
 * whole segment in memory), each object checked chunk by chunk by the
 * codec as it is read; a fetch that fails leaves no file. A fetched
 * segment is shared (a segment is read for its own summary and as its
 * predecessor's successor) and kept, unused, until its room is needed or
 * `clear`; never more than `limit` in scratch: `acquire` takes all the
 * names a reader needs at once, or waits, so two readers can never each
 * hold half of what the other waits for.
 */
export class FetchedSegments {
  private readonly entries = new Map<string, Entry>();
  private readonly waiting: Array<() => void> = [];
  private uses = 0;
  private prepared: Promise<void> | null = null;

  constructor(private readonly options: FetchedSegmentsOptions) {
    if (options.limit < 2) throw new Error(`at least 2 segments in scratch, not ${options.limit}`);
  }

  /**
   * The segments `names` in scratch, fetched unless they are there already,
   * each held until released; null for a name the archive has no object
   * of. Waits while scratch has no room for all of them.
   */
  async acquire(names: readonly string[]): Promise<Array<FetchedSegment | null>> {
    const wanted = [...new Set(names)];
    if (wanted.length > this.options.limit) throw new Error(`${wanted.length} segments at once, more than the scratch limit`);
    await this.prepare();
    for (;;) {
      const missing = wanted.filter((name) => !this.entries.has(name));
      // Decided and taken in one synchronous step: no other reader can count the same room.
      const room = this.makeRoom(missing.length, new Set(wanted));
      if (room) {
        for (const name of missing) this.entries.set(name, this.fetch(name, room));
        break;
      }
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    }
    const held = wanted.map((name) => this.entries.get(name)!);
    for (const entry of held) {
      entry.users += 1;
      entry.lastUsed = ++this.uses;
    }
    const files = await Promise.allSettled(held.map((entry) => entry.fetched));
    const failed = files.find((file) => file.status === "rejected");
    if (failed) {
      for (const entry of held) this.release(entry);
      throw failed.reason;
    }
    const found = new Map<string, FetchedSegment | null>();
    held.forEach((entry, index) => {
      const file = (files[index] as PromiseFulfilledResult<string | null>).value;
      if (file === null) this.release(entry);
      found.set(entry.name, file === null ? null : { name: entry.name, file, release: onlyOnce(() => this.release(entry)) });
    });
    return names.map((name) => found.get(name)!);
  }

  /** Removes every fetched segment no reader holds (the end of a pass or a backup's summaries). */
  async clear(): Promise<void> {
    const unused = [...this.entries.values()].filter((entry) => entry.users === 0 && entry.settled);
    await Promise.all(unused.map((entry) => this.evict(entry)));
  }

  /** How many segments are in scratch (fetched or being fetched): never more than the limit. */
  get held(): number {
    return this.entries.size;
  }

  /**
   * Room for `count` more: unused fetched segments (but those in `keep`) taken out, least
   * recently used first; resolves once their files are removed (a new
   * fetch starts only then). null when there is not enough room.
   */
  private makeRoom(count: number, keep: ReadonlySet<string>): Promise<void> | null {
    const { limit } = this.options;
    if (this.entries.size + count <= limit) return Promise.resolve();
    const evictable = [...this.entries.values()]
      .filter((entry) => entry.users === 0 && entry.settled && !keep.has(entry.name))
      .sort((a, b) => a.lastUsed - b.lastUsed)
      .slice(0, this.entries.size + count - limit);
    if (this.entries.size - evictable.length + count > limit) return null;
    return Promise.all(evictable.map((entry) => this.evict(entry))).then(() => undefined);
  }

  /** Out of the map at once (synchronously: see makeRoom), its file removed after. */
  private async evict(entry: Entry): Promise<void> {
    if (this.entries.get(entry.name) === entry) this.entries.delete(entry.name);
    const file = await entry.fetched.catch(() => null);
    if (file) await rm(file, { force: true });
    this.wake();
  }

  private release(entry: Entry): void {
    entry.users -= 1;
    // A segment that was not there, or could not be fetched, is asked for again next time rather than remembered.
    void entry.fetched.then(
      (file) => (file === null && entry.users === 0 ? this.evict(entry) : this.wake()),
      () => (entry.users === 0 ? this.evict(entry) : undefined),
    );
  }

  private wake(): void {
    for (const resolve of this.waiting.splice(0)) resolve();
  }

  private fetch(name: string, room: Promise<void>): Entry {
    const { objects, generation, scratchDir } = this.options;
    const file = path.join(scratchDir, `${FETCH_PREFIX}-${process.pid}-${randomBytes(4).toString("hex")}-${name}`);
    const entry: Entry = {
      name,
      users: 0,
      settled: false,
      lastUsed: 0,
      fetched: (async () => {
        await room;
        const content = await absentAsNull(objects.getStream(archiveKey(generation, name)));
        if (content === null) return null;
        try {
          // O_EXCL, 0600, in root's 0700 directory: a new file of Relevo's own, never one that was there.
          await pipeline(content, createWriteStream(file, { flags: "wx", mode: 0o600 }));
          return file;
        } catch (error) {
          await rm(file, { force: true });
          throw error;
        }
      })().finally(() => {
        entry.settled = true;
        this.wake();
      }),
    };
    // A fetch nobody awaits yet (all readers gone) must not be an unhandled rejection: its readers see it.
    entry.fetched.catch(() => undefined);
    return entry;
  }

  /** The scratch directory made (0700), and what dead processes left there removed: once per instance. */
  prepare(): Promise<void> {
    this.prepared ??= (async () => {
      const { scratchDir } = this.options;
      await mkdir(scratchDir, { recursive: true, mode: 0o700 });
      await chmod(scratchDir, 0o700);
      await removeLeftoverScratch(scratchDir);
    })().catch((error: unknown) => {
      this.prepared = null; // tried again next time
      throw error;
    });
    return this.prepared;
  }
}

/**
 * Removes from `scratchDir` what a summariser of a process no longer
 * running left behind (killed mid-fetch or mid-pg_waldump): fetched
 * segments and pg_waldump's directories of links. Another process's that
 * is still running (the service and a CLI restore share a data home) are
 * left alone.
 */
export async function removeLeftoverScratch(scratchDir: string): Promise<void> {
  const names = await readdir(scratchDir).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return [];
    throw error;
  });
  for (const name of leftoverScratch(names, processIsAlive)) await rm(path.join(scratchDir, name), { recursive: true, force: true });
}

/** The scratch entries (`wal-fetch-<pid>-…`, `waldump-<pid>-…`) of processes that are not alive. Pure. */
export function leftoverScratch(names: readonly string[], alive: (pid: number) => boolean): string[] {
  return names.filter((name) => {
    const pid = new RegExp(`^(?:${FETCH_PREFIX}|waldump)-(\\d+)-`).exec(name)?.[1];
    return pid !== undefined && !alive(Number(pid));
  });
}

function processIsAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: alive, another user's.
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

function onlyOnce(action: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    action();
  };
}
