import { setTimeout as delay } from "node:timers/promises";
import type { Readable } from "node:stream";
import type { Logger } from "../log";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import { parseSegmentName, segmentNumber } from "../postgres/wal-names";
import { timelinePath, type TimelineStep } from "../postgres/timelines";
import {
  NODE_WAL_DIRECTORY,
  NODE_WAL_EXPECTED,
  NODE_WAL_SCRIPT,
  NODE_WAL_WANTED,
  nodeWalAbortScript,
  nodeWalScript,
  type NodeWalMode,
} from "./node-wal";
import { expectedList, feedPlan, historyNeeded, isWalFileName, targetTimeline } from "./wal-feed-plan";
import type { WalSource } from "./wal-source";

export interface WalFeederOptions {
  readonly driver: NodeDriver;
  readonly node: NodeRef;
  readonly source: WalSource;
  readonly logger: Logger;
  readonly mode: NodeWalMode;
  /** The timeline recovery follows (recovery_target_timeline). */
  readonly timeline: number | "latest";
  /**
   * Where recovery starts (the backup's start; a bridged replica's replay
   * position): prefetched before the node asks, and no segment before it
   * is listed in `expected`; null: the whole archive, fetched from the
   * node's first request.
   */
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
/** More than a WAL file name and its newline: `wanted` is the PostgreSQL user's file, read by root every poll. */
const WANTED_MAX_BYTES = 64;

/**
 * Feeds one node's `relevo_wal/` (see node-wal.ts) from a WalSource while
 * it recovers: histories first, then the segment its restore_command asks
 * for and `ahead` more along the target timeline's path, `parallel` at a
 * time, each written atomically through the driver (the command never sees
 * half a segment); segments before the one asked are removed (replayed).
 * The `expected` list is kept to what the source holds, so the command
 * waits for those and fails at once for anything else; in recovery mode a
 * name once listed stays listed (a name that vanished from the source,
 * expired or missed by one listing, is waited for and ends in an abort,
 * never read as the end of the archive and a promotion short of it).
 * Every write after open() needs relevo_wal/ to exist: a feeder left
 * running after its node was destroyed fails, it never makes the data
 * directory again.
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
  /** The last segment restore_command asked for: replay is there while it probes for histories. */
  private lastSegmentAsked: string | null = null;
  /** Recovery mode: every name ever listed in `expected` (see refresh). */
  private readonly everListed = new Set<string>();
  private path: readonly TimelineStep[] = [];
  private pathTimeline = 0;
  private expected = "";
  private listedAt = 0;
  private lastError = "";
  private readonly stop = new AbortController();
  /** relevo_wal/ was removed under the feeder (its node destroyed): it stopped. */
  private gone = false;
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
   * PGDATA), removes what an earlier feeder left there (one that crashed:
   * segments it never trimmed, a `.partial` snapshot under its final name
   * that would be served as it is), writes the script and the list,
   * delivers the histories, and starts feeding: call it before the node
   * starts.
   */
  static async open(options: WalFeederOptions): Promise<WalFeeder> {
    const feeder = new WalFeeder(options);
    const { driver, node } = options;
    await driver.makeDirectory(node, NODE_WAL_DIRECTORY, { mode: 0o700 });
    const left = (await driver.listFiles(node, NODE_WAL_DIRECTORY)).filter(
      (entry) => entry.path !== NODE_WAL_SCRIPT && !entry.path.slice(NODE_WAL_DIRECTORY.length + 1).includes("/"),
    );
    if (left.length > 0)
      await driver.removeFiles(
        node,
        left.map((entry) => entry.path),
      );
    await driver.writeFile(node, NODE_WAL_SCRIPT, nodeWalScript(), { parents: "existing" });
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
    if (this.gone) return; // nothing left to clean, and nothing to make again
    const { driver, node } = this.options;
    if (this.options.mode === "recovery") {
      // The script first, made to abort: a copy still running (a restore that failed before it stopped it) must not
      // find the script gone (sh exits 2, "not found") and take that for the end of the archive.
      await driver.writeFile(node, NODE_WAL_SCRIPT, nodeWalAbortScript(), { parents: "existing" });
      await driver.removeFiles(
        node,
        (await driver.listFiles(node, NODE_WAL_DIRECTORY)).map((entry) => entry.path).filter((file) => file !== NODE_WAL_SCRIPT),
      );
      return;
    }
    await driver.writeFile(node, NODE_WAL_EXPECTED, "", { parents: "existing" });
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
        if (await this.stopIfGone(message)) return;
        // Once per distinct failure: the loop retries every poll.
        if (message !== this.lastError) this.options.logger.warn({ node: this.options.node.name, err: message }, "WAL feeder round failed");
        this.lastError = message;
      }
      await delay(POLL_MS, undefined, { signal: this.stop.signal }).catch(() => undefined);
    }
  }

  private async round(): Promise<void> {
    const { driver, node } = this.options;
    const read = await driver.readSmallFile(node, NODE_WAL_WANTED, WANTED_MAX_BYTES);
    const wanted = read.state === "read" ? read.content.toString("utf8").trim() : "";
    // Anything but a WAL file name (a file the PostgreSQL user filled with something else) is no request.
    if (isWalFileName(wanted)) {
      this.wanted = wanted;
      if (parseSegmentName(wanted)) this.lastSegmentAsked = wanted;
    }
    const now = Date.now();
    const unknown = this.wanted !== null && !this.available.has(this.wanted) && !this.written.has(this.wanted);
    if (now - this.listedAt >= LIST_EVERY_MS || (unknown && now - this.listedAt >= LIST_AT_MOST_EVERY_MS)) await this.refresh();
    const plan = feedPlan({
      available: this.available,
      receiving: this.receiving,
      delivered: new Set([...this.written, ...this.inFlight.keys()]),
      wanted: this.wanted,
      lastSegmentAsked: this.lastSegmentAsked,
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
    const listed = expectedList(this.available, this.fromSegment);
    let expected = listed;
    if (this.options.mode === "recovery") {
      // Never unlisted: "not listed" means "the end of the archive", and a copy promotes there.
      for (const name of listed.split("\n")) if (name) this.everListed.add(name);
      expected = [...this.everListed]
        .sort()
        .map((name) => `${name}\n`)
        .join("");
    }
    if (expected !== this.expected) {
      await this.options.driver.writeFile(this.options.node, NODE_WAL_EXPECTED, expected, { parents: "existing" });
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
      await driver.writeStream(node, `${NODE_WAL_DIRECTORY}/${name}`, stream, { durable: false, parents: "existing" });
      this.written.add(name);
      this.retryAt.delete(name);
    } catch (error) {
      if (await this.stopIfGone((error as Error).message)) return;
      this.retryAt.set(name, Date.now() + RETRY_AFTER_MS);
      logger.warn({ node: node.name, file: name, err: (error as Error).message }, "WAL file not delivered to the node: retrying");
    } finally {
      stream?.destroy();
    }
  }

  /**
   * After a failed write: stops the feeder (true) when relevo_wal/ is gone,
   * i.e. its script is (written first, never removed while the feeder
   * runs): the node was destroyed, and nothing is fed to it any more.
   */
  private async stopIfGone(why: string): Promise<boolean> {
    const entries = await this.options.driver.listFiles(this.options.node, NODE_WAL_DIRECTORY).catch(() => null);
    if (entries === null || entries.some((entry) => entry.path === NODE_WAL_SCRIPT)) return false;
    if (!this.gone)
      this.options.logger.error({ node: this.options.node.name, err: why }, "the node's relevo_wal/ is gone: its WAL feeder stops");
    this.gone = true;
    this.stop.abort();
    return true;
  }

  private async readWhole(name: string): Promise<string | null> {
    const stream = await this.options.source.fetch(name);
    if (!stream) return null;
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString("utf8");
  }
}
