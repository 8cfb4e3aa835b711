import { spawn } from "node:child_process";
import { mkdir, readdir, readFile, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import { createInterface } from "node:readline";
import type { Logger } from "../log";
import { parseSegmentName, segmentName, segmentStartLsn } from "./wal-names";

/**
 * What one archived WAL segment changed, as a later differential or
 * incremental backup needs it (issue "Backups II"): the blocks each record
 * touched, per relation file and fork, and what block references do not
 * cover — relation files created or truncated (smgr records) and database
 * directories created or dropped (which a FILE_COPY CREATE DATABASE copies
 * without block references). Written once, when the segment is archived, so
 * that no backup re-reads a week of WAL.
 */
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
  readonly records: number;
  /** pg_waldump read every record that starts in the segment without an error. */
  readonly complete: boolean;
  readonly error: string | null;
}

const BLOCK_REFERENCE = /blkref #\d+: rel (\d+\/\d+\/\d+)(?: fork (\w+))? blk (\d+)/g;

/** Pure: folds pg_waldump's lines into a summary's parts. */
export class SummaryBuilder {
  private readonly blocks = new Map<string, Map<string, Set<number>>>();
  private readonly created = new Set<string>();
  private readonly truncated = new Set<string>();
  private readonly databases = new Set<string>();
  private records = 0;

  add(line: string): void {
    if (!line.startsWith("rmgr:")) return;
    this.records += 1;
    for (const match of line.matchAll(BLOCK_REFERENCE)) {
      const relation = match[1]!;
      const fork = match[2] ?? "main";
      const forks = this.blocks.get(relation) ?? new Map<string, Set<number>>();
      this.blocks.set(relation, forks);
      const set = forks.get(fork) ?? new Set<number>();
      forks.set(fork, set);
      set.add(Number(match[3]));
    }
    const storage = /rmgr: Storage .*desc: (CREATE|TRUNCATE) (\S+)/.exec(line);
    if (storage) (storage[1] === "CREATE" ? this.created : this.truncated).add(storage[2]!);
    if (/rmgr: Database /.test(line)) for (const dir of line.matchAll(/(?:dir|to) (\d+\/\d+)/g)) this.databases.add(dir[1]!);
  }

  build(segment: string, timeline: number, complete: boolean, error: string | null): WalSegmentSummary {
    const blocks: WalSegmentSummary["blocks"] = {};
    for (const [relation, forks] of [...this.blocks].sort(([a], [b]) => a.localeCompare(b))) {
      blocks[relation] = {};
      for (const [fork, set] of forks) blocks[relation]![fork] = ranges([...set].sort((a, b) => a - b));
    }
    return {
      formatVersion: 1,
      segment,
      timeline,
      blocks,
      created: [...this.created].sort(),
      truncated: [...this.truncated].sort(),
      databases: [...this.databases].sort(),
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

export interface WalSummarizerOptions {
  readonly walDir: string;
  readonly summaryDir: string;
  readonly pgBinDir: string;
  readonly logger: Logger;
  readonly intervalMs: number;
}

/**
 * Summarises every archived segment once its successor is archived too (a
 * record that starts in a segment may end in the next), or once a later
 * timeline exists (the segment is its timeline's last).
 */
export class WalSummarizer {
  private timer: NodeJS.Timeout | null = null;
  private pass: Promise<void> = Promise.resolve();

  constructor(private readonly options: WalSummarizerOptions) {}

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.summarizePending().catch((error: Error) => this.options.logger.warn({ err: error.message }, "WAL summaries not written")), this.options.intervalMs);
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
    this.pass = run.then(() => undefined, () => undefined);
    return run;
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
    const archived = (await readdir(this.options.walDir).catch(() => [] as string[])).map((name) => ({ name, parsed: parseSegmentName(name) }));
    const segments = archived.filter((entry) => entry.parsed !== null).map((entry) => ({ name: entry.name, ...entry.parsed! }));
    const present = new Set(segments.map((entry) => entry.name));
    const newestTimeline = Math.max(0, ...segments.map((entry) => entry.timeline));
    const written: string[] = [];
    for (const entry of segments.sort((a, b) => a.segment - b.segment || a.timeline - b.timeline)) {
      if (done.has(entry.name)) continue;
      const successor = present.has(segmentName(entry.timeline, entry.segment + 1));
      if (!successor && entry.timeline === newestTimeline) continue; // not final yet
      const summary = await this.summarize(entry.name, entry.timeline, entry.segment);
      const file = path.join(this.options.summaryDir, `${entry.name}.json`);
      await writeFile(`${file}.tmp`, JSON.stringify(summary) + "\n", { mode: 0o600 });
      await rename(`${file}.tmp`, file);
      written.push(entry.name);
    }
    return written;
  }

  /**
   * A summary of one archived segment's records that start before `endLsn`,
   * not stored: for the segment a backup starts in, which is not final yet.
   */
  summarizeUpTo(timeline: number, segment: number, endLsn: string): Promise<WalSegmentSummary> {
    return this.summarize(segmentName(timeline, segment), timeline, segment, endLsn);
  }

  private summarize(name: string, timeline: number, segment: number, endLsn = segmentStartLsn(segment + 1)): Promise<WalSegmentSummary> {
    const builder = new SummaryBuilder();
    return new Promise((resolve) => {
      const child = spawn(
        path.join(this.options.pgBinDir, "pg_waldump"),
        [`--path=${this.options.walDir}`, `--timeline=${timeline}`, `--start=${segmentStartLsn(segment)}`, `--end=${endLsn}`],
        { stdio: ["ignore", "pipe", "pipe"], env: { PATH: process.env.PATH ?? "/usr/bin:/bin", LANG: "C" } },
      );
      let stderr = "";
      child.stderr.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
      createInterface({ input: child.stdout }).on("line", (line) => builder.add(line));
      child.on("error", (error) => resolve(builder.build(name, timeline, false, error.message)));
      child.on("close", (code) => {
        const error = code === 0 ? null : stderr.trim().split("\n").pop() ?? `pg_waldump exited ${code}`;
        resolve(builder.build(name, timeline, code === 0, error));
      });
    });
  }
}
