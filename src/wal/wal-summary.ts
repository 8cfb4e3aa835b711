import os from "node:os";
import { spawnHostTool } from "../util/host-tool";
import { lsnToNumber } from "../postgres/lsn";
import { randomBytes } from "node:crypto";
import { mkdir, rm, symlink } from "node:fs/promises";
import { buffer } from "node:stream/consumers";
import type { WalArchive } from "../storage/wal-archive";
import path from "node:path";
import { ErrorCode, RelevoError } from "../errors";
import { absentAsNull, type DataKeySource, type RepositoryStore } from "../repository/repository-store";
import { legacyWalSummaryKey, summarizedSegmentOf, walSummaryKey, walSummaryPrefix } from "../repository/repository-layout";

import type { RelevoConfig } from "../config/config";
import type { Logger } from "../log";
import type { Repository } from "../storage/repository";
import { segmentName, segmentStartLsn } from "../postgres/wal-names";
import { forEachParallel } from "../storage/copy-file";
import type { WalIndex } from "./wal-index";
import { FetchedSegments } from "./fetched-segments";
import { ArchiveFetchFailed, SummarySegments } from "./summary-segments";
import { pendingSummaries, possiblyIncomplete, summarySuccessor } from "./summary-plan";

import { SummaryBuilder, recordLineOfSegment, type RestorePointRecord, type WalSegmentSummary } from "./waldump-summary";

/** pg_waldump processes at once when a backup summarises segments itself. */
const SUMMARY_PARALLELISM = Math.max(1, Math.min(4, os.availableParallelism()));

/** pg_waldump processes at once in the periodic pass: a background catch-up (a lost spool's backlog) leaves the cores to the rest. */
const PASS_PARALLELISM = Math.min(2, SUMMARY_PARALLELISM);

/**
 * Segments fetched from the archive into scratch at once, at most (16 MiB
 * each): two per reader (a segment and its successor) for a backup's and
 * the pass's readers together, so that neither waits on the other's.
 */
const SCRATCH_SEGMENTS = 2 * (SUMMARY_PARALLELISM + PASS_PARALLELISM);

/** The summariser of a repository's archive, as configured. */
export function walSummarizerFor(repository: Repository, config: RelevoConfig, logger: Logger): WalSummarizer {
  return new WalSummarizer({
    archive: repository.spool,
    index: repository.archive,
    objects: repository.objects,
    generation: repository.generation,
    archiveKey: () => repository.archiveKey(),
    readLegacy: repository.readsLegacy,
    scratchDir: path.join(config.home, "tmp"),
    pgBinDir: config.pgBinDir,
    logger,
    intervalMs: config.walSummaryIntervalMs,
  });
}

export interface WalSummarizerOptions {
  /** The spool: the segments received, read through its handle (see summarize). */
  readonly archive: WalArchive;
  /** What the repository's archive holds: segments pushed, read from their objects once the spool lacks them. */
  readonly index: WalIndex;
  /** Where summaries are stored (one object per segment: repository-layout's walSummaryKey), and the archive's segments. */
  readonly objects: RepositoryStore;
  readonly generation: number;
  /** What summaries are written under (the repository's archive key). */
  readonly archiveKey: DataKeySource;
  /**
   * Whether a directory repository's plain JSON summaries from before
   * objects are read; never in an encrypted repository or a later
   * generation, which cannot have any (one there was planted).
   */
  readonly readLegacy: boolean;
  /**
   * A directory on Relevo's host, root's (`$RELEVO_HOME/tmp`, 0700), for
   * pg_waldump's directory of descriptor links (see summarize) and the
   * segments fetched from the archive's objects (see FetchedSegments): a
   * tool is given a path, and a repository on object storage has none.
   */
  readonly scratchDir: string;
  /** Segments fetched into scratch at once, at most (default SCRATCH_SEGMENTS; at least 2). */
  readonly scratchSegments?: number;
  readonly pgBinDir: string;
  readonly logger: Logger;
  readonly intervalMs: number;
}

/**
 * Summarises every archived segment once its last record is readable: its
 * successor archived (a record that starts in a segment may end in the
 * next) or being received far enough, or a later timeline begun (the
 * segment is its timeline's last). Archived is received into the spool or
 * pushed into the repository's archive: a segment pushed and no longer in
 * the spool (a spool lost or wiped, a legacy wal/ drained, a segment
 * trimmed before its summary was complete) is read from its object.
 */
export class WalSummarizer {
  private timer: NodeJS.Timeout | null = null;
  private pass: Promise<void> = Promise.resolve();
  /** Set by stop: the periodic pass in progress takes no further segment. */
  private stopping = false;
  private readonly segments: SummarySegments;
  /**
   * Segments whose stored summary is incomplete, with the file last read
   * as their successor (undefined: not read by this process): retried
   * when what they would be read with changes (see pendingSummaries).
   */
  private readonly incomplete = new Map<string, string | null | undefined>();
  /** Segments whose stored summary's completeness is known here (possiblyIncomplete ones are read once). */
  private readonly known = new Set<string>();

  constructor(private readonly options: WalSummarizerOptions) {
    const fetched = new FetchedSegments({
      objects: options.objects,
      generation: options.generation,
      scratchDir: options.scratchDir,
      limit: options.scratchSegments ?? SCRATCH_SEGMENTS,
    });
    this.segments = new SummarySegments(options.archive, fetched);
  }

  start(): void {
    if (this.timer) return;
    this.stopping = false;
    let running = false;
    this.timer = setInterval(() => {
      if (running) return; // a backlog takes longer than a tick: no queue of passes
      running = true;
      void this.summarizePending({ periodic: true })
        .catch((error: Error) => this.options.logger.warn({ err: error.message }, "WAL summaries not written"))
        .finally(() => (running = false));
    }, this.options.intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    // A backlog (a spool lost: every segment fetched from the archive) is left for the next start, not worked through.
    this.stopping = true;
    await this.pass.catch(() => undefined);
  }

  /**
   * One pass over the archive (passes never overlap); the segments
   * summarised. A periodic one (the timer's) takes no further segment once
   * stop is asked; one a caller asks for (restore points) goes to its end.
   */
  summarizePending(options: { readonly periodic?: boolean } = {}): Promise<string[]> {
    const run = this.pass.then(() => this.summarizeNow(options.periodic ?? false));
    this.pass = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /** Every named restore point in the archive's summaries (the pending segments summarised first), by LSN. */
  async restorePoints(): Promise<RestorePointRecord[]> {
    await this.summarizePending();
    const points: RestorePointRecord[] = [];
    for (const segment of await this.summarizedSegments()) points.push(...((await this.read(segment))?.restorePoints ?? []));
    return points.sort((a, b) => lsnToNumber(a.lsn) - lsnToNumber(b.lsn));
  }

  /**
   * The segment's stored summary, or null when it has none: its object, else
   * the plain JSON file a directory repository kept before objects (never
   * rewritten: it ages out with its segment). A summary that cannot be read
   * is an error, not an absent one (which a backup would take for "nothing
   * changed" no more than a restore would for "no restore point").
   */
  async read(segment: string): Promise<WalSegmentSummary | null> {
    const stored = await this.options.objects.readJson<WalSegmentSummary>(walSummaryKey(this.options.generation, segment));
    return stored ?? (this.options.readLegacy ? this.readLegacy(segment) : null);
  }

  private async readLegacy(segment: string): Promise<WalSegmentSummary | null> {
    const key = legacyWalSummaryKey(this.options.generation, segment);
    const { store } = this.options.objects;
    const bytes = await absentAsNull(store.get(key).then((stream) => buffer(stream)));
    if (bytes === null) return null;
    try {
      return JSON.parse(bytes.toString("utf8")) as WalSegmentSummary;
    } catch (cause) {
      throw new RelevoError(ErrorCode.RepositoryCorrupt, `${store.location}: ${key} is not a JSON document`, { cause, details: { key } });
    }
  }

  /** The segments with a stored summary, an object or a legacy file. */
  private async summarizedSegments(): Promise<Set<string>> {
    const { objects, generation } = this.options;
    // Legacy `<segment>.json` files count only where they are read.
    const listed = (await objects.list(walSummaryPrefix(generation))).filter(
      (info) => this.options.readLegacy || !info.key.endsWith(".json"),
    );
    return new Set(listed.map((info) => summarizedSegmentOf(generation, info.key)).filter((name): name is string => name !== null));
  }

  /** Every name received (the spool) or archived (the repository's archive), sorted. */
  private async archivedNames(): Promise<string[]> {
    const [spooled, pushed] = await Promise.all([this.options.archive.names(), this.options.index.names()]);
    return [...new Set([...spooled, ...pushed])].sort();
  }

  private async summarizeNow(periodic: boolean): Promise<string[]> {
    const done = await this.summarizedSegments();
    const names = await this.archivedNames();
    await this.learnIncomplete(possiblyIncomplete(names, done));
    const jobs = pendingSummaries({ names, summarized: done, incomplete: this.incomplete });
    const written: string[] = [];
    try {
      await forEachParallel(jobs, PASS_PARALLELISM, async (job) => {
        if (periodic && this.stopping) return;
        // A segment whose successor the archiver is still receiving: its last
        // record may end in that successor, read from what has arrived of it;
        // stored only if that record is all there (else the next pass tries again).
        const summary = await this.summarize(job.name, job.timeline, job.segment, { successor: job.successor }).catch((error: unknown) => {
          if (!(error instanceof ArchiveFetchFailed)) throw error;
          // Not stored: the next pass tries again; the other segments go on.
          this.options.logger.warn({ segment: job.name, err: error.message }, "WAL segment not summarised: the archive could not be read");
          return null;
        });
        if (summary === null || (!job.final && !summary.complete)) return;
        await this.store(summary, job.successor);
        written.push(job.name);
      });
    } finally {
      await this.segments.clear();
    }
    return written.sort();
  }

  /** Whether each stored summary of `segments` not known here is complete: read once (see possiblyIncomplete). */
  private async learnIncomplete(segments: readonly string[]): Promise<void> {
    for (const segment of segments) {
      if (this.known.has(segment)) continue;
      const stored = await this.read(segment);
      if (stored && !stored.complete) this.incomplete.set(segment, undefined);
      this.known.add(segment);
    }
  }

  /**
   * The stored summary of an archived segment whose successor is archived
   * too, summarised and stored now if the periodic pass has not yet.
   */
  async summaryOf(timeline: number, segment: number): Promise<WalSegmentSummary> {
    return (await this.summariesOf([{ timeline, segment }]))[0]!;
  }

  /**
   * The stored summaries of archived segments (as summaryOf), those not
   * summarised yet (or incomplete: tried again) made now, from the spool or
   * the archive's objects, SUMMARY_PARALLELISM at a time.
   */
  async summariesOf(segments: ReadonlyArray<{ readonly timeline: number; readonly segment: number }>): Promise<WalSegmentSummary[]> {
    const summaries = new Array<WalSegmentSummary>(segments.length);
    let names: Promise<Set<string>> | null = null;
    try {
      await forEachParallel([...segments.keys()], SUMMARY_PARALLELISM, async (index) => {
        const { timeline, segment } = segments[index]!;
        const name = segmentName(timeline, segment);
        const stored = await this.read(name);
        // An incomplete one (a final segment pg_waldump could not read) is tried again.
        if (stored?.complete) {
          summaries[index] = stored;
          return;
        }
        names ??= this.archivedNames().then((list) => new Set(list));
        const successor = summarySuccessor(timeline, segment, await names);
        const summary = await unstored(name, timeline, this.summarize(name, timeline, segment, { successor }));
        if (summary.complete) await this.store(summary, successor);
        summaries[index] = summary;
      });
    } finally {
      await this.segments.clear();
    }
    return summaries;
  }

  /**
   * Written whole or not at all (one put); a concurrent writer of the same
   * summary (another pass, a backup) writes the same content. `successor`:
   * the file it was read on into, remembered for an incomplete one.
   */
  private async store(summary: WalSegmentSummary, successor: string | null): Promise<void> {
    await this.options.objects.writeJson(walSummaryKey(this.options.generation, summary.segment), summary, {
      dataKey: await this.options.archiveKey(),
    });
    if (summary.complete) this.incomplete.delete(summary.segment);
    else this.incomplete.set(summary.segment, successor);
    this.known.add(summary.segment);
  }

  /**
   * A summary of one archived segment's records that start before `endLsn`,
   * not stored: for the segment a backup starts in, which is not final yet.
   */
  async summarizeUpTo(timeline: number, segment: number, endLsn: string): Promise<WalSegmentSummary> {
    try {
      const name = segmentName(timeline, segment);
      return await unstored(name, timeline, this.summarize(name, timeline, segment, { successor: null, endLsn }));
    } finally {
      await this.segments.clear();
    }
  }

  /**
   * pg_waldump reads segments by name from one directory, and as root (it
   * runs as Relevo): given wal/, it would open whatever a name there points
   * to, and wal/ is the PostgreSQL user's, who may plant a link to any
   * file. So Relevo opens the segment (and `successor`, read under the next
   * segment's name) itself through the archive's handle, never through a
   * link and only a regular file, hands the open files to pg_waldump as its
   * descriptors 3 and 4, and points it at a directory of its own (root's,
   * under $RELEVO_HOME/tmp, never in the repository) whose only entries are
   * links to /proc/self/fd/3 and 4: the child's own descriptors, the very
   * files Relevo opened. One directory and two links per segment: no
   * process beyond pg_waldump. A segment the spool no longer has is
   * opened from its copy fetched into that same scratch directory (see
   * SummarySegments).
   */
  private async summarize(
    name: string,
    timeline: number,
    segment: number,
    options: { readonly successor: string | null; readonly endLsn?: string },
  ): Promise<WalSegmentSummary> {
    const { successor, endLsn = null } = options;
    const held = await this.segments.open(successor ? [name, successor] : [name]).catch((error: Error) => error);
    // The archive could not be read: not the WAL's fault, and no summary to store (see unstored).
    if (held instanceof ArchiveFetchFailed) throw held;
    if (held instanceof Error) return new SummaryBuilder().build(name, timeline, false, held.message);
    const dir = path.join(this.options.scratchDir, `waldump-${process.pid}-${randomBytes(4).toString("hex")}`);
    try {
      if (!held.files[0]) return new SummaryBuilder().build(name, timeline, false, `${name} is neither in the spool nor in the archive`);
      const descriptors = held.files.filter((file) => file !== null).map((file) => file.fd);
      await this.segments.prepareScratch();
      await mkdir(dir, { mode: 0o700 });
      await symlink("/proc/self/fd/3", path.join(dir, name));
      if (descriptors.length > 1) await symlink("/proc/self/fd/4", path.join(dir, segmentName(timeline, segment + 1)));
      return await this.runWaldump({ name, timeline, segment, endLsn, dir, descriptors });
    } finally {
      await held.close();
      await rm(dir, { recursive: true, force: true });
    }
  }

  /**
   * Runs pg_waldump from the segment's start. Without `endLsn` (a whole
   * segment): pg_waldump reads on into the next segment, because it drops,
   * without an error, a record that ends past its --end — the record that
   * crosses into the next segment would be in no summary. It is stopped at
   * the first record that starts in the next segment; the summary is
   * complete only once such a record was seen (every record starting in this
   * segment was then read whole). With `endLsn` (a record boundary inside
   * the segment: a backup's start), it reads the records before it.
   */
  private runWaldump(options: {
    readonly name: string;
    readonly timeline: number;
    readonly segment: number;
    readonly endLsn: string | null;
    /** The directory of links to the child's descriptors (see summarize). */
    readonly dir: string;
    readonly descriptors: readonly number[];
  }): Promise<WalSegmentSummary> {
    const { name, timeline, segment, endLsn, dir } = options;
    const builder = new SummaryBuilder();
    const nextSegmentRecord = endLsn === null ? recordLineOfSegment(segment + 1) : null;
    return new Promise((resolve) => {
      const child = spawnHostTool(
        path.join(this.options.pgBinDir, "pg_waldump"),
        [
          `--path=${dir}`,
          `--timeline=${timeline}`,
          `--start=${segmentStartLsn(segment)}`,
          `--end=${endLsn ?? segmentStartLsn(segment + 2)}`,
        ],
        // TZ=UTC: pg_waldump prints commit times in its own time zone (see transactionEndTime).
        { stdio: ["ignore", "pipe", "pipe"], descriptors: options.descriptors, env: { TZ: "UTC" } },
      );
      let stderr = "";
      child.stderr.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
      let reachedNextSegment = false;
      // Whole lines at a time: the tail after a chunk's last line end waits for the next chunk.
      let tail = "";
      const take = (text: string): void => {
        if (reachedNextSegment) return;
        const next = nextSegmentRecord ? nextSegmentRecord.exec(text) : null;
        if (!next) return builder.addText(text);
        builder.addText(text.slice(0, text.lastIndexOf("\n", next.index) + 1));
        reachedNextSegment = true;
        child.kill();
      };
      child.stdout.setEncoding("utf8");
      child.stdout.on("data", (chunk: string) => {
        const text = tail + chunk;
        const end = text.lastIndexOf("\n");
        if (end === -1) {
          tail = text;
          return;
        }
        take(text.slice(0, end + 1));
        tail = text.slice(end + 1);
      });
      child.stdout.on("end", () => tail && take(tail));
      child.on("error", (error) => resolve(builder.build(name, timeline, false, error.message)));
      child.on("close", (code) => {
        const complete = endLsn === null ? reachedNextSegment : code === 0;
        const error = complete
          ? null
          : (stderr.trim().split("\n").pop() ?? "") || `pg_waldump stopped (${code}) before the next segment's first record`;
        resolve(builder.build(name, timeline, complete, error));
      });
    });
  }
}

/**
 * The summary, or, when the archive could not be read, an incomplete one
 * saying why (a backup then scans page LSNs), which is never stored.
 */
async function unstored(name: string, timeline: number, summary: Promise<WalSegmentSummary>): Promise<WalSegmentSummary> {
  try {
    return await summary;
  } catch (error) {
    if (!(error instanceof ArchiveFetchFailed)) throw error;
    return new SummaryBuilder().build(name, timeline, false, `the archive could not be read: ${error.message}`);
  }
}
