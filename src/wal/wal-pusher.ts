import { Readable } from "node:stream";
import { ErrorCode, RelevoError } from "../errors";
import { buffer } from "node:stream/consumers";
import type { Logger } from "../log";
import { parseSegmentName } from "../postgres/wal-names";
import { archiveKey } from "../repository/repository-layout";
import type { DataKey } from "../repository/object-codec";
import type { DataKeySource, RepositoryStore } from "../repository/repository-store";
import type { WalArchive } from "../storage/wal-archive";
import type { WalIndex } from "./wal-index";
import type { FileHandle } from "node:fs/promises";
import path from "node:path";
import type { EventLog } from "../events/event-log";
import { RefusedWalFiles, type RefusedWalFile, type RefusedWalFilesOptions } from "./refused-wal-files";
import type { TimelineStep } from "../postgres/timelines";
import { readWalLongPageHeader, WAL_LONG_HEADER_BYTES } from "../postgres/wal-page-header";
import { historyAgainstPrimary, HISTORY_MAX_BYTES, parseHistoryFile, segmentRefusal } from "./wal-file-check";

const HISTORY = /^([0-9A-F]{8})\.history$/;

/** Which received segments wait, whatever else: see pushableNames. */
export interface SegmentHold {
  /** Timelines whose history is received and not in the archive (held, refused, or failed): a restore would find no way to them. */
  readonly timelines: ReadonlySet<number>;
  /** The newest timeline the primary streamed from is on: a segment past it is none pg_receivewal wrote. Null: no primary known. */
  readonly newestTimeline: number | null;
}

const HOLDS_NOTHING: SegmentHold = { timelines: new Set(), newestTimeline: null };

/**
 * What a pass pushes from a directory pg_receivewal writes holding `names`:
 * every timeline history and every complete segment (never a `.partial`,
 * still being written, nor anything else there) not pushed yet; histories
 * first (a restore looks a timeline up before any of its segments), then
 * segments oldest first, so the archive grows without holes; a segment
 * `hold` names waits. Pure.
 */
export function pushableNames(names: readonly string[], pushed: (name: string) => boolean, hold: SegmentHold = HOLDS_NOTHING): string[] {
  const histories = names.filter((name) => HISTORY.test(name) && !pushed(name)).sort();
  const segments = names
    .map((name) => ({ name, parsed: parseSegmentName(name) }))
    .filter((entry) => entry.parsed !== null && !pushed(entry.name))
    .filter((entry) => !hold.timelines.has(entry.parsed!.timeline))
    .filter((entry) => hold.newestTimeline === null || entry.parsed!.timeline <= hold.newestTimeline)
    .sort((a, b) => a.parsed!.segment - b.parsed!.segment || a.parsed!.timeline - b.parsed!.timeline)
    .map((entry) => entry.name);
  return [...histories, ...segments];
}

/** The timelines of the histories among `names` that are not pushed: their segments wait (see SegmentHold). Pure. */
export function timelinesWithoutHistory(names: readonly string[], pushed: (name: string) => boolean): Set<number> {
  return new Set(names.flatMap((name) => (HISTORY.test(name) && !pushed(name) ? [parseInt(HISTORY.exec(name)![1]!, 16)] : [])));
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
  /**
   * The system identifier of the WAL the archive holds (its pushed
   * segments', else its newest backup's); null for an empty archive.
   * Asked until known, then kept: a segment of another is refused.
   */
  readonly archiveIdentity: () => Promise<string | null>;
  /** The timeline history of the primary the archiver streams from (WalArchiver.preparedHistory); null while none. */
  readonly primaryHistory: () => readonly TimelineStep[] | null;
  /** Where a refused file is reported (`archive:refused-file`, once per file). */
  readonly events: Pick<EventLog, "emit">;
  readonly logger: Logger;
  /** How often the source is looked at. */
  readonly intervalMs: number;
  /** Puts in flight at once. */
  readonly parallelism: number;
  /** Told of every pass the timer runs: its failure (null when none), how many files it put and left (see PushHealth). */
  readonly onPass?: (pass: { readonly error: Error | null; readonly pushed: number; readonly pending: number }) => Promise<void>;
  /**
   * While true nothing is put (the pass pushes nothing): the repository is
   * owed a set-aside of an abandoned branch (see ArchivedWalSet.owes), and
   * a file of the new branch put first under the same name would be taken
   * for one already there.
   */
  readonly paused?: () => boolean;
  /** When a refused file is tried again, and logged again (default REFUSED_WAL_DEFAULTS). */
  readonly refusals?: RefusedWalFilesOptions;
  /** The clock (ms), for tests. */
  readonly now?: () => number;
}

/**
 * Pushes the WAL pg_receivewal received into the repository's archive, each
 * complete segment and history under repository-layout's archiveKey, read
 * through the source's guarded handles and streamed (never whole in
 * memory), several at a time. Run by the holder of the archiver's lease,
 * alone: so a history's "head, then put" below has no other writer between.
 *
 * Nothing is put unchecked (see wal-file-check.ts): the spool is the
 * PostgreSQL user's. A segment's put is idempotent (a segment's bytes
 * never change once complete): a crash between a put and the index's
 * record pushes it again. A history is never replaced by different
 * content: a timeline's history is that timeline's own, and one that
 * differs is another cluster's branch of that number (refused).
 *
 * A refused file (see RefusedWalFiles) is skipped, reported once and
 * named in the cluster's health until it is gone or passes; it never stops
 * the pass. Every received history is confirmed once against the archive
 * (put, or the archive's the same), also one the index names: while a
 * timeline's received history is not confirmed (held, refused), that
 * timeline's segments wait, so a refused history of timeline N stops N's
 * segments and no other's.
 */
export class WalPusher {
  private timer: NodeJS.Timeout | null = null;
  private pass: Promise<string[]> | null = null;
  /** What the last pass left unpushed (failed, or not reached after a failure): the repository's WAL lag in files. */
  private pendingAfterPass = 0;
  /** The timed pass in progress with its report (see runTick). */
  private ticking: Promise<void> | null = null;
  /** Aborted by stop: a put in flight to a slow or silent store ends then, the stop does not wait out its retries. */
  private stopping = new AbortController();
  private readonly refusals: RefusedWalFiles;
  /** Histories confirmed (put, or the archive's the same), with their fingerprint then: not compared again unless changed. */
  private readonly confirmed = new Map<string, string | null>();
  /** Refused histories the index held when refused: tried again as soon as the index lets them go (set aside, review 21 L2). */
  private readonly refusedWhileIndexed = new Set<string>();
  /** Histories held (see historyAgainstPrimary), with their fingerprint and the primary's history then: looked at again once either changes. */
  private readonly held = new Map<string, { readonly print: string | null; readonly primary: readonly TimelineStep[] | null }>();
  /** The archive's system identifier once known (it does not change within a generation). */
  private systemIdentifier: string | null = null;
  private readonly now: () => number;

  constructor(private readonly options: WalPusherOptions) {
    this.refusals = new RefusedWalFiles(options.refusals);
    this.now = options.now ?? Date.now;
  }

  start(): void {
    if (this.timer) return;
    if (this.stopping.signal.aborted) this.stopping = new AbortController();
    const tick = async (): Promise<void> => {
      this.ticking = this.runTick();
      await this.ticking;
      if (this.timer) this.timer = setTimeout(() => void tick(), this.options.intervalMs);
    };
    this.timer = setTimeout(() => void tick(), 0);
  }

  /** One timed pass and its report (onPass): the stop awaits both, so no report of a stopped pusher lands after it. */
  private async runTick(): Promise<void> {
    const pass = await this.pushPending().then(
      (pushed) => ({ error: null, pushed: pushed.length, pending: this.pendingAfterPass }),
      (error: Error) => ({ error, pushed: 0, pending: this.pendingAfterPass }),
    );
    const { onPass, logger } = this.options;
    // A pass the stop cut short says nothing of the store.
    if (this.stopping.signal.aborted) return;
    if (onPass) await onPass(pass).catch((error: Error) => logger.warn({ err: error.message }, "the pusher's health not recorded"));
    else if (pass.error) logger.warn({ err: pass.error.message }, "WAL not pushed to the repository");
  }

  async stop(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.stopping.abort(new RelevoError(ErrorCode.Timeout, "the WAL pusher stopped: the put in flight ended"));
    await this.pass?.catch(() => undefined);
    await this.ticking;
  }

  /** One pass (passes never overlap): pushes what is pending; returns the names newly in the archive. */
  pushPending(): Promise<string[]> {
    this.pass ??= this.pushOnce().finally(() => (this.pass = null));
    return this.pass;
  }

  /** The received files refused now, oldest first. */
  get refused(): RefusedWalFile[] {
    return this.refusals.list();
  }

  /** Why the cluster is not healthy on the pusher's account (a refused file each, the first few); none while nothing is refused. */
  get healthReasons(): string[] {
    const refused = this.refusals.list();
    const named = refused
      .slice(0, 3)
      .map((file) => `the WAL pusher refuses ${path.join(this.options.source.path, file.name)}: ${file.reason}; remove or replace it`);
    return refused.length > 3 ? [...named, `the WAL pusher refuses ${refused.length - 3} more received files`] : named;
  }

  private async pushOnce(): Promise<string[]> {
    const { source, index, parallelism } = this.options;
    if (this.options.paused?.() === true) return [];
    const now = this.now();
    const names = await source.names();
    const known = new Set(await index.names());
    const refused = this.refusals.present(names);
    const histories = names.filter((name) => HISTORY.test(name)).sort();
    for (const name of this.confirmed.keys()) if (!histories.includes(name)) this.confirmed.delete(name);
    for (const name of this.held.keys()) if (!histories.includes(name)) this.held.delete(name);
    const primary = this.options.primaryHistory();
    const prints = await source.fingerprints([...new Set([...histories, ...refused])]);
    const printOf = (name: string) => prints.get(name) ?? null;
    const skips = (name: string) =>
      this.refusals.skips(name, printOf(name), now) && !(this.refusedWhileIndexed.has(name) && !known.has(name));
    const pushed: string[] = [];
    // A store that fails a history's put fails the pass: what it leaves is everything not in the archive.
    this.pendingAfterPass = pushableNames(names, (name) => known.has(name)).length;
    // Histories first, each confirmed before any segment of its timeline.
    for (const name of histories) {
      if (this.confirmed.has(name) && this.confirmed.get(name) === printOf(name)) continue;
      if (skips(name)) continue;
      const held = this.held.get(name);
      if (held && held.print === printOf(name) && held.primary === primary) continue;
      const outcome = await this.push(name, { indexed: known.has(name), now });
      if (outcome === "held") this.held.set(name, { print: printOf(name), primary });
      else this.held.delete(name);
      if (outcome !== "put" && outcome !== "present") continue;
      this.confirmed.set(name, printOf(name));
      if (!known.has(name)) pushed.push(name);
      known.add(name);
    }
    const hold: SegmentHold = {
      timelines: timelinesWithoutHistory(histories, (name) => this.confirmed.has(name)),
      newestTimeline: primary?.at(-1)?.timeline ?? null,
    };
    const queue = pushableNames(names, (name) => HISTORY.test(name) || known.has(name) || skips(name), hold);
    const failures: Error[] = [];
    const due = queue.length;
    const pushedHistories = pushed.length;
    const worker = async (): Promise<void> => {
      for (let name = queue.shift(); name !== undefined; name = queue.shift()) {
        // Stopped: no further file is begun (the put in flight ends with the stop's abort).
        if (this.stopping.signal.aborted) break;
        try {
          if ((await this.push(name, { indexed: false, now })) === "put") pushed.push(name);
        } catch (error) {
          failures.push(error as Error);
          // What follows a segment the store failed would leave a hole behind it: stop taking more (a refused one is skipped).
          queue.length = 0;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, parallelism) }, worker));
    this.pendingAfterPass = failures.length > 0 ? due - (pushed.length - pushedHistories) : 0;
    if (failures.length > 0) throw failures[0]!;
    return pushed.sort();
  }

  /** Pushes one file, recording it in the index when the archive has it; a refusal is recorded, reported and logged here. */
  private async push(name: string, context: { readonly indexed: boolean; readonly now: number }): Promise<PutWalOutcome["kind"]> {
    const { source, objects, generation, index, logger } = this.options;
    const checks: WalFileChecks = {
      systemIdentifier: HISTORY.test(name) ? null : await this.archiveSystemIdentifier(),
      primaryHistory: this.options.primaryHistory(),
    };
    const outcome = await putWalFile(
      { source, objects, generation, dataKey: await this.options.archiveKey(), checks, signal: this.stopping.signal },
      name,
    );
    if (outcome.kind === "refused") {
      await this.refuse(name, outcome.reason, context);
      return outcome.kind;
    }
    this.refusedWhileIndexed.delete(name);
    if (this.refusals.clear(name)) logger.info({ file: name, outcome: outcome.kind }, "a received WAL file refused before passes now");
    if (outcome.kind === "put") this.systemIdentifier ??= outcome.systemIdentifier;
    if (outcome.kind === "put" || outcome.kind === "present") index.added(name);
    return outcome.kind;
  }

  private async refuse(name: string, reason: string, context: { readonly indexed: boolean; readonly now: number }): Promise<void> {
    const { source, objects, logger, events } = this.options;
    const fingerprint = (await source.fingerprints([name]).catch(() => new Map<string, string>())).get(name) ?? null;
    const { report, log } = this.refusals.refuse(name, reason, fingerprint, context.now);
    if (context.indexed) this.refusedWhileIndexed.add(name);
    else this.refusedWhileIndexed.delete(name);
    const file = path.join(source.path, name);
    if (log) {
      logger.error(
        { file, reason, repository: objects.location },
        "a received WAL file is refused: never put into the repository, skipped until it changes or is removed",
      );
    }
    if (report) {
      await events.emit({
        kind: "archive:refused-file",
        severity: "critical",
        node: null,
        message: `the WAL pusher refuses ${file}: ${reason}; it is not put into the repository until it is removed or replaced`,
        data: { file: name, reason },
      });
    }
  }

  private async archiveSystemIdentifier(): Promise<string | null> {
    this.systemIdentifier ??= await this.options.archiveIdentity();
    return this.systemIdentifier;
  }
}

/** What the pusher checks before a put (see wal-file-check.ts); the legacy wal/ drain puts without them. */
export interface WalFileChecks {
  /** The system identifier the archive's WAL carries; null while none is known (an empty archive). */
  readonly systemIdentifier: string | null;
  /** The timeline history of the primary the archiver streams from (oldest first); null while it has prepared none. */
  readonly primaryHistory: readonly TimelineStep[] | null;
}

/** What became of one file (see putWalFile). */
export type PutWalOutcome =
  /** Put; a segment's system identifier (from its checked header), null for a history or an unchecked put. */
  | { readonly kind: "put"; readonly systemIdentifier: string | null }
  /** A history the archive holds with the same content. */
  | { readonly kind: "present" }
  /** Not in the source (any more). */
  | { readonly kind: "absent" }
  /** A history not to be put yet (see historyAgainstPrimary). */
  | { readonly kind: "held" }
  /**
   * Never put: the file cannot be opened or read (a link, a directory, a
   * FIFO, EIO) or fails its checks; `differs`: a history the archive holds
   * with other content (another cluster's branch of that timeline number).
   */
  | { readonly kind: "refused"; readonly reason: string; readonly differs: boolean };

/**
 * Puts one complete segment or history of `source` (read through its
 * guarded handles, a segment streamed, a history read up to
 * HISTORY_MAX_BYTES) at its archive key, after `checks` (null: none, the
 * legacy drain's case). A segment's put is idempotent; a history already
 * stored is compared, never replaced. Problems of the source file are
 * outcomes ("refused"); a store that fails throws.
 */
export async function putWalFile(
  options: {
    readonly source: WalArchive;
    readonly objects: RepositoryStore;
    readonly generation: number;
    /** The archive's data key in an encrypted repository (Repository.archiveKey); undefined: unencrypted. */
    readonly dataKey: DataKey | undefined;
    readonly checks: WalFileChecks | null;
    /** Ends a put in flight (the pusher's stop): nothing is left under the key. */
    readonly signal?: AbortSignal;
  },
  name: string,
): Promise<PutWalOutcome> {
  const { source, objects, generation, dataKey, checks, signal } = options;
  const key = archiveKey(generation, name);
  const opened = await openChecked(source, name, checks);
  if (opened.kind !== "open") return opened;
  const { file } = opened;
  if (HISTORY.test(name)) {
    await file.close();
    if (await objects.exists(key)) {
      const stored = await buffer(await objects.getStream(key));
      return stored.equals(opened.content!)
        ? { kind: "present" }
        : { kind: "refused", reason: "the repository holds a different history of this timeline (never replaced)", differs: true };
    }
    // Not in the archive yet: put only as the primary's own (a planted future history, once put, would stay).
    if (checks && opened.history) {
      const decision = historyAgainstPrimary(opened.history, checks.primaryHistory);
      if (decision === "hold") return { kind: "held" };
      if (decision !== "push") return { kind: "refused", reason: decision.refused, differs: false };
    }
    await objects.putStream(key, Readable.from([opened.content!]), { dataKey, signal });
    return { kind: "put", systemIdentifier: null };
  }
  // The stream owns the handle: it closes it at its end, on an error, or when destroyed.
  const content = file.createReadStream({ start: 0, highWaterMark: 1024 * 1024, autoClose: true });
  let unreadable: Error | null = null;
  content.once("error", (error) => (unreadable = error));
  try {
    await objects.putStream(key, content, { dataKey, signal });
  } catch (error) {
    // The spool's file failed mid-read (EIO): its problem, not the store's.
    if (unreadable) return { kind: "refused", reason: `it cannot be read: ${(unreadable as Error).message}`, differs: false };
    throw error;
  } finally {
    content.destroy();
  }
  return { kind: "put", systemIdentifier: opened.systemIdentifier };
}

type Opened =
  | {
      readonly kind: "open";
      readonly file: FileHandle;
      /** A history's content, and its parse when checked. */
      readonly content: Buffer | null;
      readonly history: { readonly timeline: number; readonly ancestors: readonly TimelineStep[] } | null;
      readonly systemIdentifier: string | null;
    }
  | Exclude<PutWalOutcome, { kind: "put" } | { kind: "present" } | { kind: "held" }>;

/**
 * Opens `name` in `source` and checks it (see wal-file-check.ts): a
 * segment's first page, a history's content (read whole, within the
 * cap, and parsed). Every failure of the source's file is a refusal.
 */
async function openChecked(source: WalArchive, name: string, checks: WalFileChecks | null): Promise<Opened> {
  let file: FileHandle | null = null;
  try {
    const held = await source.openFiles([name]);
    file = held.files[0] ?? null;
    if (!file) return { kind: "absent" };
    const info = await file.stat();
    const facts = { bytes: info.size, links: info.nlink };
    if (HISTORY.test(name)) {
      // Never more than the cap, whatever the file grows to meanwhile.
      const content = await readUpTo(file, Math.min(facts.bytes, HISTORY_MAX_BYTES) + 1);
      if (!checks) {
        if (content.length > HISTORY_MAX_BYTES) return refuse(`it is over a history's ${HISTORY_MAX_BYTES} bytes`);
        return { kind: "open", file, content, history: null, systemIdentifier: null };
      }
      const parsed = parseHistoryFile(name, { ...facts, bytes: Math.max(facts.bytes, content.length) }, content);
      if (!parsed.ok) return refuse(parsed.reason);
      return { kind: "open", file, content, history: parsed, systemIdentifier: null };
    }
    if (!checks) return { kind: "open", file, content: null, history: null, systemIdentifier: null };
    const firstPage = await readUpTo(file, WAL_LONG_HEADER_BYTES);
    const refusal = segmentRefusal(name, facts, firstPage, checks.systemIdentifier);
    if (refusal) return refuse(refusal);
    return { kind: "open", file, content: null, history: null, systemIdentifier: readWalLongPageHeader(firstPage)!.systemIdentifier };
  } catch (error) {
    return refuse(`it cannot be opened or read: ${(error as Error).message}`);
  }

  async function close<T>(outcome: T): Promise<T> {
    await file?.close().catch(() => undefined);
    return outcome;
  }
  function refuse(reason: string): Promise<Opened> {
    return close({ kind: "refused", reason, differs: false });
  }
}

/** The first `bytes` of `file` (fewer when it is shorter), read at its start. */
async function readUpTo(file: FileHandle, bytes: number): Promise<Buffer> {
  const content = Buffer.alloc(bytes);
  let filled = 0;
  while (filled < bytes) {
    const { bytesRead } = await file.read(content, filled, bytes - filled, filled);
    if (bytesRead === 0) break;
    filled += bytesRead;
  }
  return content.subarray(0, filled);
}
