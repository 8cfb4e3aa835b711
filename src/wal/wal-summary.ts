import { spawnHostTool } from "../util/host-tool";
import { lsnToNumber } from "../postgres/lsn";
import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, rename, rm, symlink, writeFile } from "node:fs/promises";
import path from "node:path";

import type { RelevoConfig } from "../config/config";
import type { Logger } from "../log";
import type { Repository } from "../storage/repository";
import { parseSegmentName, segmentName, segmentStartLsn } from "../postgres/wal-names";

/**
 * What one archived WAL segment changed, as a later differential or
 * incremental backup needs it (issue "Backups II"): the blocks each record
 * touched, per relation file and fork, and what block references do not
 * cover — relation files created or truncated (smgr records) and database
 * directories created or dropped (which a FILE_COPY CREATE DATABASE copies
 * without block references). Written once, when the segment is archived, so
 * that no backup re-reads a week of WAL.
 */
export interface RestorePointRecord {
  readonly name: string;
  readonly lsn: string;
}

export interface WalSegmentSummary {
  readonly formatVersion: 1;
  readonly segment: string;
  readonly timeline: number;
  /** "spcOid/dbOid/relfilenode" → fork ("main", "fsm", "vm", "init") → touched blocks as [first, last] ranges. */
  readonly blocks: Record<string, Record<string, Array<[number, number]>>>;
  /** Relation files created, as PostgreSQL names them ("base/5/16384"). */
  readonly created: readonly string[];
  /** Relation files truncated. */
  readonly truncated: readonly string[];
  /** Database directories created or dropped ("spcOid/dbOid"): to be copied whole. */
  readonly databases: readonly string[];
  /** Named restore points (pg_create_restore_point) the segment holds, in order: a restore to a name starts from a backup before it. */
  readonly restorePoints?: readonly RestorePointRecord[];
  readonly records: number;
  /** pg_waldump read every record that starts in the segment without an error. */
  readonly complete: boolean;
  readonly error: string | null;
}

const BLOCK_REFERENCE = "blkref #";

function* linesStartingWith(text: string, marker: string): Generator<string> {
  for (let at = text.indexOf(marker); at !== -1; at = text.indexOf(marker, at + marker.length)) {
    const end = text.indexOf("\n", at);
    yield text.slice(at, end === -1 ? text.length : end);
  }
}

/**
 * Pure: folds pg_waldump's lines into a summary's parts. A segment is about a
 * hundred thousand lines, so a line is scanned with indexOf, not regular
 * expressions (which cost as much as pg_waldump itself).
 */
export class SummaryBuilder {
  private readonly blocks = new Map<string, Map<string, Set<number>>>();
  private readonly created = new Set<string>();
  private readonly truncated = new Set<string>();
  private readonly databases = new Set<string>();
  private readonly restorePoints: RestorePointRecord[] = [];
  private records = 0;
  /** The main-fork set the previous reference went to, and "<relation> " to recognise it. */
  private last: { prefix: string; set: Set<number> } | null = null;

  /** One line of pg_waldump's output. */
  add(line: string): void {
    this.addText(line);
  }

  /**
   * Whole lines of pg_waldump's output (a chunk of its stdout cut at a line
   * end), scanned as one string: no line is split out but the rare storage
   * and database records.
   */
  addText(text: string): void {
    for (let at = text.startsWith("rmgr:") ? 0 : text.indexOf("\nrmgr:"); at !== -1; at = text.indexOf("\nrmgr:", at + 1))
      this.records += 1;
    // "blkref #0: rel 1663/5/16396 blk 114754 FPW" or "... rel 1663/5/16396 fork vm blk 0"
    for (let at = text.indexOf(BLOCK_REFERENCE); at !== -1; at = text.indexOf(BLOCK_REFERENCE, at + BLOCK_REFERENCE.length)) {
      const relationStart = text.indexOf(": rel ", at) + 6;
      if (relationStart < 6) break;
      let relationEnd: number;
      let set: Set<number> | null = null;
      // Consecutive references mostly name one relation: compared in place, not sliced out.
      if (this.last && text.startsWith(this.last.prefix, relationStart)) {
        relationEnd = relationStart + this.last.prefix.length - 1;
        set = this.last.set;
      } else {
        relationEnd = text.indexOf(" ", relationStart);
        if (relationEnd === -1) break;
      }
      let fork = "main";
      let cursor = relationEnd + 1;
      if (text.startsWith("fork ", cursor)) {
        const forkEnd = text.indexOf(" ", cursor + 5);
        fork = text.slice(cursor + 5, forkEnd);
        cursor = forkEnd + 1;
        set = null;
      }
      if (!text.startsWith("blk ", cursor)) continue;
      let block = 0;
      let digits = 0;
      for (let index = cursor + 4; index < text.length; index += 1, digits += 1) {
        const code = text.charCodeAt(index);
        if (code < 48 || code > 57) break;
        block = block * 10 + (code - 48);
      }
      if (digits === 0) continue;
      (set ?? this.setFor(text.slice(relationStart, relationEnd), fork)).add(block);
    }
    // Records whose line says more than its block references: smgr (relation files created, truncated) and database directories.
    for (const line of linesStartingWith(text, "rmgr: Storage")) {
      const storage = /desc: (CREATE|TRUNCATE) (\S+)/.exec(line);
      if (storage) (storage[1] === "CREATE" ? this.created : this.truncated).add(storage[2]!);
    }
    for (const line of linesStartingWith(text, "rmgr: Database")) {
      for (const dir of line.matchAll(/(?:dir|to) (\d+\/\d+)/g)) this.databases.add(dir[1]!);
    }
    for (const line of linesStartingWith(text, "rmgr: XLOG")) {
      const point = /lsn: ([0-9A-F]+\/[0-9A-F]+),.* desc: RESTORE_POINT (.*)$/.exec(line);
      if (point) this.restorePoints.push({ name: point[2]!, lsn: point[1]! });
    }
  }

  private setFor(relation: string, fork: string): Set<number> {
    const forks = this.blocks.get(relation) ?? new Map<string, Set<number>>();
    this.blocks.set(relation, forks);
    const set = forks.get(fork) ?? new Set<number>();
    forks.set(fork, set);
    this.last = fork === "main" ? { prefix: `${relation} `, set } : null;
    return set;
  }

  build(segment: string, timeline: number, complete: boolean, error: string | null): WalSegmentSummary {
    const blocks: WalSegmentSummary["blocks"] = {};
    for (const [relation, forks] of [...this.blocks].sort(([a], [b]) => a.localeCompare(b))) {
      blocks[relation] = {};
      for (const [fork, set] of forks) blocks[relation][fork] = ranges([...set].sort((a, b) => a - b));
    }
    return {
      formatVersion: 1,
      segment,
      timeline,
      blocks,
      created: [...this.created].sort(),
      truncated: [...this.truncated].sort(),
      databases: [...this.databases].sort(),
      restorePoints: [...this.restorePoints],
      records: this.records,
      complete,
      error,
    };
  }
}

function ranges(sorted: readonly number[]): Array<[number, number]> {
  const result: Array<[number, number]> = [];
  for (const block of sorted) {
    const last = result[result.length - 1];
    if (last && block === last[1] + 1) last[1] = block;
    else result.push([block, block]);
  }
  return result;
}

/** The summariser of a repository's archive, as configured. */
export function walSummarizerFor(repository: Repository, config: RelevoConfig, logger: Logger): WalSummarizer {
  return new WalSummarizer({
    walDir: repository.walDir,
    summaryDir: repository.walSummaryDir,
    pgBinDir: config.pgBinDir,
    logger,
    intervalMs: config.walSummaryIntervalMs,
  });
}

export interface WalSummarizerOptions {
  readonly walDir: string;
  readonly summaryDir: string;
  readonly pgBinDir: string;
  readonly logger: Logger;
  readonly intervalMs: number;
}

/**
 * Summarises every archived segment once its last record is readable: its
 * successor archived (a record that starts in a segment may end in the
 * next) or being received far enough, or a later timeline begun (the
 * segment is its timeline's last).
 */
export class WalSummarizer {
  private timer: NodeJS.Timeout | null = null;
  private pass: Promise<void> = Promise.resolve();

  constructor(private readonly options: WalSummarizerOptions) {}

  start(): void {
    if (this.timer) return;
    let running = false;
    this.timer = setInterval(() => {
      if (running) return; // a backlog takes longer than a tick: no queue of passes
      running = true;
      void this.summarizePending()
        .catch((error: Error) => this.options.logger.warn({ err: error.message }, "WAL summaries not written"))
        .finally(() => (running = false));
    }, this.options.intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.pass.catch(() => undefined);
  }

  /** One pass over the archive (passes never overlap); the segments summarised. */
  summarizePending(): Promise<string[]> {
    const run = this.pass.then(() => this.summarizeNow());
    this.pass = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /** Every named restore point in the archive's summaries (the pending segments summarised first), by LSN. */
  async restorePoints(): Promise<RestorePointRecord[]> {
    await this.summarizePending();
    const names = (await readdir(this.options.summaryDir).catch(() => [] as string[])).filter((name) => name.endsWith(".json"));
    const points: RestorePointRecord[] = [];
    for (const name of names) points.push(...((await this.read(name.slice(0, -".json".length)))?.restorePoints ?? []));
    return points.sort((a, b) => lsnToNumber(a.lsn) - lsnToNumber(b.lsn));
  }

  async read(segment: string): Promise<WalSegmentSummary | null> {
    try {
      return JSON.parse(await readFile(path.join(this.options.summaryDir, `${segment}.json`), "utf8")) as WalSegmentSummary;
    } catch {
      return null;
    }
  }

  private async summarizeNow(): Promise<string[]> {
    await mkdir(this.options.summaryDir, { recursive: true, mode: 0o700 });
    const done = new Set((await readdir(this.options.summaryDir)).map((name) => name.replace(/\.json$/, "")));
    const names = await readdir(this.options.walDir).catch(() => [] as string[]);
    const receiving = new Set(names.filter((name) => name.endsWith(".partial")).map((name) => name.slice(0, -".partial".length)));
    const archived = names.map((name) => ({ name, parsed: parseSegmentName(name) }));
    const segments = archived.filter((entry) => entry.parsed !== null).map((entry) => ({ name: entry.name, ...entry.parsed! }));
    const present = new Set(segments.map((entry) => entry.name));
    const newestTimeline = Math.max(0, ...segments.map((entry) => entry.timeline));
    const written: string[] = [];
    for (const entry of segments.sort((a, b) => a.segment - b.segment || a.timeline - b.timeline)) {
      if (done.has(entry.name)) continue;
      const next = segmentName(entry.timeline, entry.segment + 1);
      const final = present.has(next) || entry.timeline !== newestTimeline;
      if (!final && !receiving.has(next)) continue;
      // A segment whose successor the archiver is still receiving: its last
      // record may end in that successor, read from what has arrived of it;
      // stored only if that record is all there (else the next pass tries again).
      const summary = await this.summarizeWhole(entry.timeline, entry.segment, names);
      if (!final && !summary.complete) continue;
      await this.store(summary);
      written.push(entry.name);
    }
    return written;
  }

  /**
   * The stored summary of an archived segment whose successor is archived
   * too, summarised and stored now if the periodic pass has not yet.
   */
  async summaryOf(timeline: number, segment: number): Promise<WalSegmentSummary> {
    const name = segmentName(timeline, segment);
    const stored = await this.read(name);
    // An incomplete one (a final segment pg_waldump could not read) is tried again.
    if (stored?.complete) return stored;
    const summary = await this.summarizeWhole(timeline, segment, await readdir(this.options.walDir).catch(() => [] as string[]));
    if (summary.complete) await this.store(summary);
    return summary;
  }

  /**
   * A whole segment, read on into its successor: its own timeline's, else
   * what the archiver is still receiving of it (.partial), else a later
   * timeline's (which holds the same records up to the branch: the old
   * timeline's copy of the segment the branch falls in is set aside).
   */
  private async summarizeWhole(timeline: number, segment: number, names: readonly string[]): Promise<WalSegmentSummary> {
    const name = segmentName(timeline, segment);
    const next = segmentName(timeline, segment + 1);
    if (names.includes(next)) return this.summarize(name, timeline, segment);
    const later = names
      .map((file) => ({ file, parsed: parseSegmentName(file) }))
      .filter(({ parsed }) => parsed && parsed.segment === segment + 1 && parsed.timeline > timeline)
      .sort((a, b) => a.parsed!.timeline - b.parsed!.timeline)[0]?.file;
    const successor = names.includes(`${next}.partial`) ? `${next}.partial` : later;
    return successor ? this.summarizeBeforeSuccessor(name, next, successor, timeline, segment) : this.summarize(name, timeline, segment);
  }

  /** Written whole or not at all; a concurrent writer of the same summary (another pass, a backup) writes the same content. */
  private async store(summary: WalSegmentSummary): Promise<void> {
    await mkdir(this.options.summaryDir, { recursive: true, mode: 0o700 });
    const file = path.join(this.options.summaryDir, `${summary.segment}.json`);
    const temp = `${file}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
    await writeFile(temp, JSON.stringify(summary) + "\n", { mode: 0o600 });
    await rename(temp, file);
  }

  /**
   * A summary of one archived segment's records that start before `endLsn`,
   * not stored: for the segment a backup starts in, which is not final yet.
   */
  summarizeUpTo(timeline: number, segment: number, endLsn: string): Promise<WalSegmentSummary> {
    return this.summarize(segmentName(timeline, segment), timeline, segment, endLsn);
  }

  /** pg_waldump reads segments by name from one directory: the segment, and `successor` linked under the next segment's name. */
  private async summarizeBeforeSuccessor(
    name: string,
    next: string,
    successor: string,
    timeline: number,
    segment: number,
  ): Promise<WalSegmentSummary> {
    const dir = path.join(this.options.summaryDir, `.receiving-${process.pid}-${randomBytes(4).toString("hex")}`);
    await mkdir(dir, { mode: 0o700 });
    try {
      await symlink(path.join(this.options.walDir, name), path.join(dir, name));
      await symlink(path.join(this.options.walDir, successor), path.join(dir, next));
      return await this.summarize(name, timeline, segment, null, dir);
    } finally {
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
  private summarize(
    name: string,
    timeline: number,
    segment: number,
    endLsn: string | null = null,
    walDir = this.options.walDir,
  ): Promise<WalSegmentSummary> {
    const builder = new SummaryBuilder();
    const nextSegmentRecord = endLsn === null ? recordLineOfSegment(segment + 1) : null;
    return new Promise((resolve) => {
      const child = spawnHostTool(
        path.join(this.options.pgBinDir, "pg_waldump"),
        [
          `--path=${walDir}`,
          `--timeline=${timeline}`,
          `--start=${segmentStartLsn(segment)}`,
          `--end=${endLsn ?? segmentStartLsn(segment + 2)}`,
        ],
        { stdio: ["ignore", "pipe", "pipe"] },
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
 * Matches pg_waldump's line of a record that starts in `segment` ("lsn:
 * 0/1E000028,", "lsn: 1/05009818,"): 16 MiB segments, 256 to a 4 GiB
 * "xlogid"; pg_waldump prints the low half as 8 hex digits.
 */
export function recordLineOfSegment(segment: number): RegExp {
  const high = Math.floor(segment / 256)
    .toString(16)
    .toUpperCase();
  const top = (segment % 256).toString(16).toUpperCase().padStart(2, "0");
  return new RegExp(`lsn: ${high}/${top}[0-9A-F]{6},`);
}
