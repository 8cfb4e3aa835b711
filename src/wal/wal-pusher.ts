import { Readable } from "node:stream";
import { buffer } from "node:stream/consumers";
import type { Logger } from "../log";
import { parseSegmentName } from "../postgres/wal-names";
import { archiveKey } from "../repository/repository-layout";
import type { DataKey } from "../repository/object-codec";
import type { DataKeySource, RepositoryStore } from "../repository/repository-store";
import type { WalArchive } from "../storage/wal-archive";
import type { WalIndex } from "./wal-index";

const HISTORY = /^[0-9A-F]{8}\.history$/;

/**
 * What a pass pushes from a directory pg_receivewal writes holding `names`:
 * every timeline history and every complete segment (never a `.partial`,
 * still being written, nor anything else there) not pushed yet; histories
 * first (a restore looks a timeline up before any of its segments), then
 * segments oldest first, so the archive grows without holes. Pure.
 */
export function pushableNames(names: readonly string[], pushed: (name: string) => boolean): string[] {
  const histories = names.filter((name) => HISTORY.test(name) && !pushed(name)).sort();
  const segments = names
    .map((name) => ({ name, parsed: parseSegmentName(name) }))
    .filter((entry) => entry.parsed !== null && !pushed(entry.name))
    .sort((a, b) => a.parsed!.segment - b.parsed!.segment || a.parsed!.timeline - b.parsed!.timeline)
    .map((entry) => entry.name);
  return [...histories, ...segments];
}

export interface WalPusherOptions {
  /** Where pg_receivewal writes, read by root through its guarded handles (the PostgreSQL user owns it). */
  readonly source: WalArchive;
  readonly objects: RepositoryStore;
  readonly generation: number;
  /** The repository's index of what it holds: fed with every put. */
  readonly index: WalIndex;
  /** What archive objects are written under (the repository's archive key). */
  readonly archiveKey: DataKeySource;
  readonly logger: Logger;
  /** How often the source is looked at. */
  readonly intervalMs: number;
  /** Puts in flight at once. */
  readonly parallelism: number;
  /** Told of every pass the timer runs: its failure (null when none), how many files it put and left (see PushHealth). */
  readonly onPass?: (pass: { readonly error: Error | null; readonly pushed: number; readonly pending: number }) => Promise<void>;
}

/**
 * Pushes the WAL pg_receivewal received into the repository's archive, each
 * complete segment and history under repository-layout's archiveKey, read
 * through the source's guarded handles and streamed (never whole in
 * memory), several at a time. Run by the holder of the archiver's lease,
 * alone: so a history's "head, then put" below has no other writer between.
 *
 * A segment's put is idempotent (a segment's bytes never change once
 * complete): a crash between a put and the index's record pushes it again.
 * A history is never replaced by different content: a timeline's history
 * is that timeline's own, and one that differs is another cluster's branch
 * of that number (refused, logged, left where it is).
 */
export class WalPusher {
  private timer: NodeJS.Timeout | null = null;
  private pass: Promise<string[]> | null = null;
  /** Histories found different in the archive: reported once each. */
  private readonly refusedHistories = new Set<string>();
  /** What the last pass left unpushed (failed, or not reached after a failure): the repository's WAL lag in files. */
  private pendingAfterPass = 0;

  constructor(private readonly options: WalPusherOptions) {}

  start(): void {
    if (this.timer) return;
    const tick = async (): Promise<void> => {
      const pass = await this.pushPending().then(
        (pushed) => ({ error: null, pushed: pushed.length, pending: this.pendingAfterPass }),
        (error: Error) => ({ error, pushed: 0, pending: this.pendingAfterPass }),
      );
      const { onPass, logger } = this.options;
      if (onPass) await onPass(pass).catch((error: Error) => logger.warn({ err: error.message }, "the pusher's health not recorded"));
      else if (pass.error) logger.warn({ err: pass.error.message }, "WAL not pushed to the repository");
      if (this.timer) this.timer = setTimeout(() => void tick(), this.options.intervalMs);
    };
    this.timer = setTimeout(() => void tick(), 0);
  }

  async stop(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.pass?.catch(() => undefined);
  }

  /** One pass (passes never overlap): pushes what is pending; returns the names pushed. */
  pushPending(): Promise<string[]> {
    this.pass ??= this.pushOnce().finally(() => (this.pass = null));
    return this.pass;
  }

  private async pushOnce(): Promise<string[]> {
    const { source, index, parallelism } = this.options;
    const names = await source.names();
    const known = new Set(await index.names());
    const queue = pushableNames(names, (name) => known.has(name) || this.refusedHistories.has(name));
    const pushed: string[] = [];
    const failures: Error[] = [];
    const due = queue.length;
    const worker = async (): Promise<void> => {
      for (let name = queue.shift(); name !== undefined; name = queue.shift()) {
        try {
          if (await this.push(name)) pushed.push(name);
        } catch (error) {
          failures.push(error as Error);
          // What follows a failed segment would leave a hole behind it: stop taking more.
          queue.length = 0;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, parallelism) }, worker));
    this.pendingAfterPass = failures.length > 0 ? due - pushed.length : 0;
    if (failures.length > 0) throw failures[0]!;
    return pushed.sort();
  }

  /** Pushes one file; false when there was nothing to push (gone from the source meanwhile, or a history refused). */
  private async push(name: string): Promise<boolean> {
    const { source, objects, generation, index } = this.options;
    const outcome = await putWalFile({ source, objects, generation, dataKey: await this.options.archiveKey() }, name);
    if (outcome === "refused") {
      this.refusedHistories.add(name);
      this.options.logger.error(
        { history: name, repository: objects.location },
        "the repository holds a different history of this timeline: it is never replaced, the received one stays where it is",
      );
    }
    if (outcome !== "put" && outcome !== "present") return false;
    index.added(name);
    return true;
  }
}

/**
 * Puts one complete segment or history of `source` (read through its
 * guarded handles, a segment streamed) at its archive key. A segment's put
 * is idempotent; a history already stored is compared, never replaced:
 * "present" when the same, "refused" when it differs (another cluster's
 * branch of that timeline number). "absent" when the source has no such
 * file (any more).
 */
export async function putWalFile(
  options: {
    readonly source: WalArchive;
    readonly objects: RepositoryStore;
    readonly generation: number;
    /** The archive's data key in an encrypted repository (Repository.archiveKey); undefined: unencrypted. */
    readonly dataKey: DataKey | undefined;
  },
  name: string,
): Promise<"put" | "present" | "refused" | "absent"> {
  const { source, objects, generation, dataKey } = options;
  const key = archiveKey(generation, name);
  if (HISTORY.test(name)) {
    const local = await source.read(name);
    if (local === null) return "absent";
    if (await objects.exists(key)) {
      const stored = await buffer(await objects.getStream(key));
      return stored.equals(local) ? "present" : "refused";
    }
    await objects.putStream(key, Readable.from([local]), { dataKey });
    return "put";
  }
  const held = await source.openFiles([name]);
  const file = held.files[0];
  if (!file) {
    await held.close();
    return "absent";
  }
  // The stream owns the handle: it closes it at its end, on an error, or when destroyed.
  const content = file.createReadStream({ highWaterMark: 1024 * 1024, autoClose: true });
  try {
    await objects.putStream(key, content, { dataKey });
  } finally {
    content.destroy();
  }
  return "put";
}
