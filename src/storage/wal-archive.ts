import { lstat, mkdir, rename } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import path from "node:path";
import {
  assertEntryName,
  listEntryNames,
  openGuardedBelow,
  openGuardedDirectory,
  openRegularFile,
  readRegularFile,
  type GuardedDirectory,
} from "../util/guarded-directory";
import { removeEntry } from "../util/guarded-removal";
import { createOwnedFile, type FileOwner } from "../util/owned-files";
import { ErrorCode, RelevoError } from "../errors";
import { historyFileName } from "../postgres/wal-names";

/** An archived file's name, when it was archived (its mtime) and its size. */
export interface ArchivedFile {
  readonly name: string;
  readonly modifiedAt: Date;
  readonly bytes: number;
}

/** Segment files held open for a reader that takes descriptors (pg_waldump, see WalSummarizer); close() releases them. */
export interface HeldWalFiles {
  /** In the order asked; null where the archive has no such file. */
  readonly files: ReadonlyArray<FileHandle | null>;
  close(): Promise<void>;
}

/** A directory on the way to the spool, as lstat sees it. */
export interface AncestorFacts {
  readonly path: string;
  readonly uid: number;
  readonly mode: number;
}

/**
 * Why a directory on the way to a WAL directory (its ancestors, nearest
 * first) would let someone else than root swap it: one owned by another
 * user, or writable by group or others without the sticky bit (in a
 * sticky one only the owner renames an entry, as in /tmp). Null when
 * none does. Pure.
 */
export function unsafeAncestor(ancestors: readonly AncestorFacts[], rootUid: number): string | null {
  for (const ancestor of ancestors) {
    if (ancestor.uid !== rootUid && ancestor.uid !== 0) return `${ancestor.path} is owned by uid ${ancestor.uid}`;
    const sticky = (ancestor.mode & 0o1000) !== 0;
    if ((ancestor.mode & 0o022) !== 0 && !sticky)
      return `${ancestor.path} is writable by others (mode ${(ancestor.mode & 0o7777).toString(8)})`;
  }
  return null;
}

/** Where set-aside WAL goes below wal/: `diverged/<time>` (kept, never replayed). */
export function divergedFolder(now: Date = new Date()): string[] {
  return ["diverged", now.toISOString().replace(/[:.]/g, "-")];
}

/**
 * A directory pg_receivewal writes as the PostgreSQL OS user, as root works
 * in it: the WAL spool, `$RELEVO_HOME/wal-spool/` (see Repository), and a
 * repository's legacy `wal/` while it is drained (see legacy-wal-drain).
 *
 * pg_receivewal writes there as the PostgreSQL OS user, so that user owns
 * the directory and may swap any name in it (a segment, a history file,
 * `diverged/`) for a symlink at any moment, e.g. through `COPY … TO
 * PROGRAM`. Root acting by name would then create, move, read or write
 * wherever the link points: a file named like a segment moved into
 * /etc/cron.d, secrets.json read as a timeline history. So every operation
 * here first opens the directory from its parent (root's) with
 * O_DIRECTORY | O_NOFOLLOW (guarded-directory), then works relative to
 * that handle: files opened O_NOFOLLOW and fstat'ed (a regular file, or
 * DATA_DIR_NOT_OURS), created O_EXCL | O_NOFOLLOW, renamed and removed
 * through handles, a set-aside directory made and opened the same way. One
 * handle per operation: the archiver lists and reads here often.
 */
export class WalArchive {
  /** The directory: for pg_receivewal's -D and messages (no node reads it); root never resolves a name below it from here. */
  readonly path: string;
  /** The directory's parent, root's: every operation opens the directory from there, through no link. */
  private readonly parent: string;
  /** The names from `parent` down to the directory, each opened O_NOFOLLOW. */
  private readonly entries: readonly string[];

  constructor(
    directory: string,
    /** Who owns what root adds (the directory's owner, as pg_receivewal's own files are); null: root's own. */
    private readonly owner: FileOwner,
    /** A folder below `directory` (see folder()): reached from `directory`'s parent, through no link. */
    below: readonly string[] = [],
  ) {
    for (const name of below) assertEntryName(name);
    const top = path.resolve(directory);
    this.parent = path.dirname(top);
    this.entries = [path.basename(top), ...below];
    this.path = path.join(top, ...below);
  }

  /** The folder `below` this directory (a `diverged/<time>`), worked in the same way: opened from this directory's parent. */
  folder(below: readonly string[]): WalArchive {
    return new WalArchive(path.join(this.parent, this.entries[0]!), this.owner, [...this.entries.slice(1), ...below]);
  }

  /** Runs `use` on the directory opened through no link; `absent()` when it does not exist (yet, or any more). */
  private async within<T>(use: (wal: GuardedDirectory) => Promise<T>, absent: () => T): Promise<T> {
    const wal = await openGuardedDirectory(this.parent, this.entries);
    if (!wal) return absent();
    try {
      return await use(wal);
    } finally {
      await wal.close();
    }
  }

  /**
   * Makes the directory (0700, the owner's: pg_receivewal writes it as the
   * PostgreSQL OS user) unless it exists; refuses (DATA_DIR_NOT_OURS) a
   * chain of parents another user could swap: then the directory root
   * works in through its handles could be anyone's. The PostgreSQL user
   * must traverse the parents (the data home is 0711).
   */
  async ensure(): Promise<void> {
    await mkdir(this.parent, { recursive: true, mode: 0o711 });
    const ancestors: AncestorFacts[] = [];
    for (let dir = this.parent; ; dir = path.dirname(dir)) {
      const info = await lstat(dir);
      if (!info.isDirectory()) {
        throw new RelevoError(ErrorCode.DataDirNotOurs, `${dir}, on the way to the WAL directory ${this.path}, is not a directory`);
      }
      ancestors.push({ path: dir, uid: info.uid, mode: info.mode });
      if (dir === path.dirname(dir)) break;
    }
    const unsafe = unsafeAncestor(ancestors, process.getuid?.() ?? 0);
    if (unsafe !== null) {
      throw new RelevoError(
        ErrorCode.DataDirNotOurs,
        `the WAL directory ${this.path} could be swapped by another user: ${unsafe}; choose another RELEVO_HOME`,
        { details: { env: "RELEVO_HOME" } },
      );
    }
    await mkdir(this.path, { mode: 0o700 }).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== "EEXIST") throw error;
    });
    // Through no link: a spool planted as a link by its owner is refused here, and its mode and owner are set through
    // the handle just opened, never by path (in a sticky parent such as /tmp the spool's owner may rename the entry and
    // put a link in its place between a check and a chmod by name: review 23).
    const opened = await openGuardedDirectory(this.parent, this.entries);
    if (!opened) throw new RelevoError(ErrorCode.DataDirNotOurs, `the WAL directory ${this.path} could not be made`);
    try {
      await opened.handle.chmod(0o700);
      if (this.owner) await opened.handle.chown(this.owner.uid, this.owner.gid);
    } finally {
      await opened.close();
    }
  }

  /** Whether the directory is there (a real directory: a link in its place is DATA_DIR_NOT_OURS). */
  exists(): Promise<boolean> {
    return this.within(
      () => Promise.resolve(true),
      () => false,
    );
  }

  /** Every name in the archive (segments, .partial, .history, diverged/ …); none when there is no archive. */
  names(): Promise<string[]> {
    return this.within(
      (wal) => listEntryNames(wal),
      () => [],
    );
  }

  /** The regular files among `names` with their mtimes; links and anything else are not archived files (lstat: never followed). */
  files(names: readonly string[]): Promise<ArchivedFile[]> {
    return this.within(
      async (wal) => {
        const found: ArchivedFile[] = [];
        for (const name of names) {
          assertEntryName(name);
          // Removed meanwhile (expiry): not archived any more. Any other failure is not "absent".
          const info = await lstat(wal.at(name)).catch((error: NodeJS.ErrnoException) => {
            if (error.code === "ENOENT") return null;
            throw error;
          });
          if (info?.isFile()) found.push({ name, modifiedAt: info.mtime, bytes: info.size });
        }
        return found;
      },
      () => [],
    );
  }

  /**
   * What each of `names` is now, as a string that changes when it is
   * replaced or rewritten (lstat, never followed: inode, size, mode, times
   * to the nanosecond); absent names are left out. For the pusher's
   * refusals: a refused file is tried again once it changed.
   */
  fingerprints(names: readonly string[]): Promise<Map<string, string>> {
    return this.within(
      async (wal) => {
        const prints = new Map<string, string>();
        for (const name of names) {
          assertEntryName(name);
          const info = await lstat(wal.at(name), { bigint: true }).catch((error: NodeJS.ErrnoException) => {
            if (error.code === "ENOENT") return null;
            throw error;
          });
          if (info) prints.set(name, `${info.ino}:${info.size}:${info.mode}:${info.mtimeNs}:${info.ctimeNs}`);
        }
        return prints;
      },
      () => new Map<string, string>(),
    );
  }

  /**
   * A file's content (the first `maxBytes` only, when given); null when it is
   * absent. A link or anything but a regular file: DATA_DIR_NOT_OURS, never read.
   */
  read(name: string, options: { maxBytes?: number } = {}): Promise<Buffer | null> {
    return this.within(
      (wal) => readRegularFile(wal, name, options),
      () => null,
    );
  }

  /** Timeline `timeline`'s history as archived; null when the archive has none. */
  async readHistory(timeline: number): Promise<string | null> {
    return (await this.read(historyFileName(timeline)))?.toString("utf8") ?? null;
  }

  /**
   * Opens `names` for a reader that takes descriptors, each as read() would
   * (never through a link); absent ones are null. The caller closes them.
   */
  openFiles(names: readonly string[]): Promise<HeldWalFiles> {
    return this.within(
      async (wal) => {
        const files: Array<FileHandle | null> = [];
        const close = async () => {
          for (const file of files) await file?.close();
        };
        try {
          for (const name of names) files.push(await openRegularFile(wal, name));
        } catch (error) {
          await close();
          throw error;
        }
        return { files, close };
      },
      () => ({ files: names.map(() => null), close: () => Promise.resolve() }),
    );
  }

  /**
   * Creates `name` with `content`, owned by the archive's owner, unless
   * something of that name is there (an archived file is never replaced;
   * a link there is not followed either: "present").
   */
  create(name: string, content: string | Buffer): Promise<"added" | "present"> {
    return this.within(
      async (wal) => {
        assertEntryName(name);
        try {
          await createOwnedFile(wal.at(name), content, { mode: 0o600, owner: this.owner });
          return "added" as const;
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code === "EEXIST") return "present" as const;
          throw error;
        }
      },
      () => {
        throw new Error(`the WAL archive ${this.path} does not exist`);
      },
    );
  }

  /**
   * Adds a timeline history file to the archive unless one of that name is
   * there (an archived history is that timeline's own and is never
   * replaced), owned like the archiver's files. For a history written
   * outside the archiver (see copyNewerHistories): PostgreSQL's search for
   * the newest timeline stops at the first number it cannot find, so a
   * history missing from the archive hides every later timeline from a
   * restore.
   */
  addHistory(timeline: number, content: string): Promise<"added" | "present"> {
    return this.create(historyFileName(timeline), content);
  }

  /**
   * Renames `from` to `to` within the directory, through its handle (both
   * names entries of it: rename follows neither). For a file root made
   * under a temporary name: published whole.
   */
  rename(from: string, to: string): Promise<void> {
    return this.within(
      async (wal) => {
        assertEntryName(from);
        assertEntryName(to);
        await rename(wal.at(from), wal.at(to));
      },
      () => {
        throw new Error(`${this.path} does not exist`);
      },
    );
  }

  /** Removes the directory itself and all in it, through handles from its parent (never a walk by name); absent: nothing to do. */
  async removeAll(): Promise<void> {
    const parent = await openGuardedDirectory(this.parent, this.entries.slice(0, -1));
    if (!parent) return;
    try {
      await removeEntry(parent, this.entries.at(-1)!);
    } finally {
      await parent.close();
    }
  }

  /** Removes `name` (a file, a link itself, or a directory through handles); absent: nothing to do. */
  remove(name: string): Promise<void> {
    return this.within(
      (wal) => removeEntry(wal, name),
      () => undefined,
    );
  }

  /**
   * Moves `names` into `folder` below wal/ (made for root, 0700, when
   * absent), kept and never replayed; a name gone meanwhile is skipped. A
   * link on the way to `folder` (`wal/diverged` planted as one) is refused
   * with DATA_DIR_NOT_OURS before anything is made or moved. A name that is
   * itself a link moves as the link (rename never follows its operands).
   * Returns where they went (for messages) and what moved.
   */
  setAside(names: readonly string[], folder: readonly string[]): Promise<{ readonly path: string; readonly moved: string[] }> {
    return this.within(
      async (wal) => {
        for (const name of names) assertEntryName(name);
        const aside = await openGuardedBelow(wal, folder, { create: { mode: 0o700, owner: null } });
        if (!aside) throw new Error(`${path.join(this.path, ...folder)} could not be made`);
        try {
          const moved: string[] = [];
          for (const name of names) {
            const done = await rename(wal.at(name), aside.at(name)).then(
              () => true,
              (error: NodeJS.ErrnoException) => {
                if (error.code === "ENOENT") return false;
                throw error;
              },
            );
            if (done) moved.push(name);
          }
          return { path: path.join(this.path, ...folder), moved };
        } finally {
          await aside.close();
        }
      },
      () => ({ path: path.join(this.path, ...folder), moved: [] }),
    );
  }
}
