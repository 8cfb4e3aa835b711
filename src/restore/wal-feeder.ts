import { setTimeout as delay } from "node:timers/promises";
import type { Readable } from "node:stream";
import type { Logger } from "../log";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import { segmentNumber } from "../postgres/wal-names";
import { timelinePath, type TimelineStep } from "../postgres/timelines";
import { NODE_WAL_DIRECTORY, NODE_WAL_EXPECTED, NODE_WAL_SCRIPT, NODE_WAL_WANTED, nodeWalScript, type NodeWalMode } from "./node-wal";
import { expectedList, feedPlan, historyNeeded, targetTimeline } from "./wal-feed-plan";
import type { WalSource } from "./wal-source";

export interface WalFeederOptions {
  readonly driver: NodeDriver;
  readonly node: NodeRef;
  readonly source: WalSource;
  readonly logger: Logger;
  readonly mode: NodeWalMode;
  /** The timeline recovery follows (recovery_target_timeline). */
  readonly timeline: number | "latest";
  /** Where recovery starts (the backup's start): prefetched before the node asks; null: from its first request. */
  readonly from: { readonly timeline: number; readonly lsn: string } | null;
  /** Segments kept ready beyond the one asked (default 8). */
  readonly ahead?: number;
  /** Fetches at once (default 4): replay is never bound by one request at a time. */
  readonly parallel?: number;
}

const POLL_MS = 100;
/** How often the source is listed again (new WAL archived meanwhile); sooner when the node asks for a name not listed yet. */
const LIST_EVERY_MS = 1000;
const LIST_AT_MOST_EVERY_MS = 250;
const RETRY_AFTER_MS = 1000;

/**
 * Feeds one node's `relevo_wal/` (see node-wal.ts) from a WalSource while
 * it recovers: histories first, then the segment its restore_command asks
 * for and `ahead` more along the target timeline's path, `parallel` at a
 * time, each written atomically through the driver (the command never sees
 * half a segment); segments before the one asked are removed (replayed).
 * The `expected` list is kept to what the source holds, so the command
 * waits for those and fails at once for anything else.
 *
 * Owned by whoever opened it: close() stops it. A restored copy's
 * directory goes with it; a standby keeps its script with an empty list
 * (its restore_command, in postgresql.auto.conf, then finds nothing and the
 * standby streams).
 */
export class WalFeeder {
  private available = new Set<string>();
  private receiving = new Set<string>();
  private readonly written = new Set<string>();
  private readonly inFlight = new Map<string, Promise<void>>();
  private readonly retryAt = new Map<string, number>();
  private wanted: string | null = null;
  private path: readonly TimelineStep[] = [];
  private pathTimeline = 0;
  private expected = "";
  private listedAt = 0;
  private lastError = "";
  private readonly stop = new AbortController();
  private loop: Promise<void> = Promise.resolve();
  private readonly ahead: number;
  private readonly parallel: number;
  private readonly fromSegment: number | null;

  private constructor(private readonly options: WalFeederOptions) {
    this.ahead = options.ahead ?? 8;
    this.parallel = Math.max(1, options.parallel ?? 4);
    this.fromSegment = options.from ? segmentNumber(options.from.lsn) : null;
  }

  /**
   * Makes the node's directory (0700, owned by the PostgreSQL user, as
   * PGDATA), writes the script and the list, delivers the histories, and
   * starts feeding: call it before the node starts.
   */
  static async open(options: WalFeederOptions): Promise<WalFeeder> {
    const feeder = new WalFeeder(options);
    const { driver, node } = options;
    await driver.makeDirectory(node, NODE_WAL_DIRECTORY, { mode: 0o700 });
    await driver.writeFile(node, NODE_WAL_SCRIPT, nodeWalScript());
    await feeder.refresh();
    await feeder.round();
    await Promise.all(feeder.inFlight.values());
    feeder.loop = feeder.run();
    return feeder;
  }

  /** What the node's directory holds now (for tests and logs). */
  get delivered(): readonly string[] {
    return [...this.written].sort();
  }

  async close(): Promise<void> {
    this.stop.abort();
    await this.loop;
    await Promise.allSettled(this.inFlight.values());
    const { driver, node } = this.options;
    if (this.options.mode === "recovery") {
      await driver.removeFiles(node, [NODE_WAL_DIRECTORY]);
      return;
    }
    await driver.writeFile(node, NODE_WAL_EXPECTED, "");
    await driver.removeFiles(
      node,
      [...this.written].map((name) => `${NODE_WAL_DIRECTORY}/${name}`),
    );
    this.written.clear();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  private async run(): Promise<void> {
    while (!this.stop.signal.aborted) {
      try {
        await this.round();
        this.lastError = "";
      } catch (error) {
        const message = (error as Error).message;
        // Once per distinct failure: the loop retries every poll.
        if (message !== this.lastError) this.options.logger.warn({ node: this.options.node.name, err: message }, "WAL feeder round failed");
        this.lastError = message;
      }
      await delay(POLL_MS, undefined, { signal: this.stop.signal }).catch(() => undefined);
    }
  }

  private async round(): Promise<void> {
    const { driver, node } = this.options;
    const wanted = (await driver.readFile(node, NODE_WAL_WANTED))?.toString("utf8").trim() || null;
    this.wanted = wanted ?? this.wanted;
    const now = Date.now();
    const unknown = this.wanted !== null && !this.available.has(this.wanted) && !this.written.has(this.wanted);
    if (now - this.listedAt >= LIST_EVERY_MS || (unknown && now - this.listedAt >= LIST_AT_MOST_EVERY_MS)) await this.refresh();
    const plan = feedPlan({
      available: this.available,
      receiving: this.receiving,
      delivered: new Set([...this.written, ...this.inFlight.keys()]),
      wanted: this.wanted,
      path: this.path,
      fromSegment: this.fromSegment,
      ahead: this.ahead,
    });
    for (const name of plan.fetch) {
      if (this.inFlight.size >= this.parallel) break;
      if ((this.retryAt.get(name) ?? 0) > now) continue;
      const fetching = this.deliver(name).finally(() => this.inFlight.delete(name));
      this.inFlight.set(name, fetching);
    }
    const trim = plan.trim.filter((name) => this.written.has(name));
    if (trim.length > 0) {
      await driver.removeFiles(
        node,
        trim.map((name) => `${NODE_WAL_DIRECTORY}/${name}`),
      );
      for (const name of trim) this.written.delete(name);
    }
  }

  /** Lists the source again; rewrites `expected` and the path when they changed. */
  private async refresh(): Promise<void> {
    const { names, receiving } = await this.options.source.list();
    this.listedAt = Date.now();
    this.available = new Set(names);
    this.receiving = new Set(receiving);
    const timeline = targetTimeline({ asked: this.options.timeline, fromTimeline: this.options.from?.timeline ?? 1, available: names });
    if (timeline !== this.pathTimeline) {
      const history = historyNeeded(timeline);
      const content = history && this.available.has(history) ? await this.readWhole(history) : null;
      this.path = timelinePath(timeline, content);
      this.pathTimeline = timeline;
    }
    const expected = expectedList(this.available, this.fromSegment);
    if (expected !== this.expected) {
      await this.options.driver.writeFile(this.options.node, NODE_WAL_EXPECTED, expected);
      this.expected = expected;
    }
  }

  private async deliver(name: string): Promise<void> {
    const { driver, node, source, logger } = this.options;
    let stream: Readable | null = null;
    try {
      stream = await source.fetch(name);
      if (!stream) {
        // Gone since it was listed (expired): not expected any more after the next listing.
        this.available.delete(name);
        return;
      }
      // Not fsynced: PostgreSQL copies the file into pg_wal and replays it; lost in a crash, it is fetched again.
      await driver.writeStream(node, `${NODE_WAL_DIRECTORY}/${name}`, stream, { durable: false });
      this.written.add(name);
      this.retryAt.delete(name);
    } catch (error) {
      this.retryAt.set(name, Date.now() + RETRY_AFTER_MS);
      logger.warn({ node: node.name, file: name, err: (error as Error).message }, "WAL file not delivered to the node: retrying");
    } finally {
      stream?.destroy();
    }
  }

  private async readWhole(name: string): Promise<string | null> {
    const stream = await this.options.source.fetch(name);
    if (!stream) return null;
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString("utf8");
  }
}
