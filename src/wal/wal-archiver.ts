import { spawnHostTool } from "../util/host-tool";
import { lsnToNumber } from "../postgres/lsn";
import type { ChildProcess } from "node:child_process";
import type { Client } from "pg";
import path from "node:path";
import type { Credentials } from "../postgres/connection";
import { withNodeClient } from "../postgres/connection";
import type { EventLog } from "../events/event-log";
import type { Logger } from "../log";
import type { NodeRef } from "../nodes/node-driver";
import type { OsIdentity } from "../nodes/os-user";
import { sleep } from "../util/sleep";
import type { Repository } from "../storage/repository";
import { ArchivedWalSet } from "./archived-wal-set";
import { parseSegmentName, SEGMENT_SIZE, segmentName } from "../postgres/wal-names";
import { segmentFilesAlong, serverHistory, timelinePath, type TimelineStep } from "../postgres/timelines";

import { CURRENT_TIMELINE_SQL } from "../postgres/node-state";
import { ensureReservedSlot } from "../postgres/replication-config";
import { divergedFolder } from "../storage/wal-archive";
import { ErrorCode, RelevoError } from "../errors";
import { readSystemIdentifier } from "../postgres/control-data";
import { archiveIdentity, foreignWalRefusal, type ArchiveIdentity } from "./archive-identity";
import { emptySpoolPlaceholder, lostSlotGap, timelineBoundaryPlaceholder, walRemovedBeforeArchive } from "./receive-start";
import type { ArchiveGaps } from "./archive-gaps";
import { afterRound, streamedAfterMs } from "./archiver-failures";
import { drainLegacyWal } from "./legacy-wal-drain";
import { ensureHoldSlot, HOLD_SLOT, holdAdvanceLsn, readHoldSlot, spoolDroppable, spoolFull } from "./hold-slot";
import { summarizedSegmentOf, walSummaryPrefix } from "../repository/repository-layout";
import { conninfoString } from "../postgres/config-values";
import { libpqTlsParameters } from "../postgres/tls-settings";

export const ARCHIVE_SLOT = "relevo_archive";

/** Makes the archive's slot unless it exists (reserving WAL at once) and returns its restart_lsn: the oldest WAL the primary keeps for the archive. */
async function archiveSlotStart(client: Client): Promise<string> {
  await ensureReservedSlot(client, ARCHIVE_SLOT);
  await ensureHoldSlot(client, ARCHIVE_SLOT);
  const slot = await client.query<{ lsn: string }>("SELECT restart_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = $1", [
    ARCHIVE_SLOT,
  ]);
  return slot.rows[0]!.lsn;
}

/** How often a refused primary is looked at again (the operator may fix the repository meanwhile; a change of primary wakes it at once). */
const REFUSED_RECHECK_MS = 5000;

/** How often the hold slot is moved past what was pushed, the spool trimmed and its size looked at. */
const HOLD_INTERVAL_MS = 1000;
/**
 * How long the hold slot is left unread while nothing new was pushed past
 * where it was last seen: each look is a session on the primary, and a
 * session a second is work a quiet primary should not do. Only this
 * archiver moves the slot; a lost one is found at the next look.
 */
const HOLD_RECHECK_MS = 30_000;

/**
 * Creates the archiver's slot and its hold slot (see hold-slot.ts) on
 * `primary` unless they exist, reserving WAL at once, so that nothing
 * written from now on is recycled before it is in the repository.
 */
export async function ensureArchiveSlot(primary: NodeRef, superuser: Credentials, timeoutMs: number): Promise<void> {
  await withNodeClient(primary, superuser, timeoutMs, async (client) => {
    await ensureReservedSlot(client, ARCHIVE_SLOT);
    await ensureHoldSlot(client, ARCHIVE_SLOT);
  });
}

/**
 * The archive's segment files (complete or .partial) that hold WAL off a
 * history: of a timeline not on it, or of an ancestor past where the history
 * branched off it. Pure.
 */
export function divergedFiles(names: readonly string[], history: readonly TimelineStep[]): string[] {
  const steps = new Map(history.map((step) => [step.timeline, step] as const));
  return names.filter((name) => {
    const parsed = parseSegmentName(name.replace(/\.partial$/, ""));
    if (!parsed) return false;
    const step = steps.get(parsed.timeline);
    if (!step) return true;
    return step.switchLsn !== null && (parsed.segment + 1) * SEGMENT_SIZE > lsnToNumber(step.switchLsn);
  });
}

export interface WalArchiverOptions {
  /**
   * The lowest-numbered repository: its spool (the one every repository's
   * pusher takes from) is pg_receivewal's, and a backup waits for its WAL
   * there (waitForArchived).
   */
  readonly repository: Repository;
  /**
   * Every repository the archive is pushed to, lowest number first
   * (`repository` among them), read at each use: `opened` those the
   * service has opened, `pending` how many configured ones it has not yet
   * (their stores did not answer); default: `repository` alone. The hold
   * slot moves, and the spool is trimmed, only past what every one of them
   * holds (nothing while one is pending: it holds nothing known); where
   * streaming resumes and which files are off the primary's history are
   * decided over the opened ones (ArchivedWalSet).
   */
  readonly repositories?: { readonly opened: () => readonly Repository[]; readonly pending: () => number };
  /**
   * The repositories' archived WAL as one (shared with their pushers, which
   * wait while their repository is owed a set-aside, and with failover);
   * default: one over `repositories`.
   */
  readonly archivedWal?: ArchivedWalSet;
  readonly pgBinDir: string;
  readonly identity: OsIdentity | null;
  readonly superuser: Credentials;
  readonly replication: Credentials;
  /** The CA's certificate file on this host (pg_receivewal's sslrootcert): readable by `identity`. */
  readonly caFile: string;
  readonly nodeTimeoutMs: number;
  readonly events: EventLog;
  /** The archive's gaps: a lost slot's hole is reported here (an event, and the cluster's health). */
  readonly gaps: ArchiveGaps;
  readonly logger: Logger;
  /** RELEVO_WAL_SPOOL_MAX: the spool's bytes at which receiving stops (archive:spool-full) until the pusher drained it below 80 %. */
  readonly spoolMaxBytes: number;
}

/**
 * The continuous WAL archive: Relevo streams WAL from the current primary
 * with PostgreSQL's own pg_receivewal, over a physical slot (so the primary
 * keeps what has not been archived yet), into the repository.
 *
 * Why this and not archive_command: an archive_command runs on the node and
 * must reach the repository from there, which a container on another host
 * cannot; pg_receivewal only needs the PostgreSQL port, which Relevo reaches
 * for every node. PostgreSQL 15's slots do not follow a failover, so on a new
 * primary the archiver creates the slot again and pg_receivewal resumes from
 * the end of what the archive holds (it reads that from the directory); the
 * segments of the old timeline up to the fork are served by the new primary,
 * which had received them as a replica. (pg_receivewal is a client of the
 * primary, run on Relevo's host, not an operation on a node: that is why it
 * is started here and not through the NodeDriver.)
 */
export class WalArchiver {
  private child: ChildProcess | null = null;
  private target: NodeRef | null = null;
  private stopped = true;
  private loop: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  private refused: { readonly key: string; readonly reason: string } | null = null;
  /** Whether the spool is full (see spoolFull): nothing is received meanwhile. */
  private spoolIsFull = false;
  /**
   * The primary this archiver's loop has prepared (not refused as another
   * cluster's, its diverged WAL set aside) and its timeline history: the
   * hold slot is made and moved only there, along that history.
   */
  private prepared: { readonly target: NodeRef; readonly history: readonly TimelineStep[] } | null = null;
  /** Where the hold slot was last seen (see HOLD_RECHECK_MS), on which primary and when. */
  private holdSeen: { readonly target: NodeRef; readonly restartLsn: string; readonly at: number } | null = null;
  private holdTimer: NodeJS.Timeout | null = null;
  private holdPass: Promise<void> | null = null;
  /** The last failure to finish an owed set-aside, logged once until it changes. */
  private lastUnsettled: string | null = null;
  /** Whether the repository's legacy wal/ was drained (see drainLegacyWal): once per archiver, before it first receives. */
  private legacyDrained = false;

  /** The cluster's WAL over every repository and the spool (see ArchivedWalSet). */
  private readonly archivedWal: ArchivedWalSet;

  constructor(private readonly options: WalArchiverOptions) {
    this.archivedWal = options.archivedWal ?? new ArchivedWalSet(() => this.everyRepository.map((repository) => repository.archivedWal));
  }

  /** Every repository the archive goes to (read each time: a start-over moves each to its next generation). */
  private get everyRepository(): readonly Repository[] {
    return this.options.repositories?.opened() ?? [this.options.repository];
  }

  /**
   * The WAL files every repository holds: the primary keeps, and the spool
   * keeps, whatever one of them still lacks (one repository down fills
   * the spool and stops receiving rather than let the primary recycle WAL
   * it never got).
   */
  private async pushedEverywhere(): Promise<Set<string>> {
    // A repository not opened yet holds nothing the archiver knows of: the primary and the spool keep everything for it.
    if ((this.options.repositories?.pending() ?? 0) > 0) return new Set();
    const [first, ...others] = await Promise.all(this.everyRepository.map((repository) => repository.archive.names()));
    const held = new Set(first);
    for (const names of others) {
      const set = new Set(names);
      for (const name of held) if (!set.has(name)) held.delete(name);
    }
    return held;
  }

  /** Whether this archiver is started (in this instance). */
  get running(): boolean {
    return !this.stopped;
  }

  /**
   * The timeline history (oldest first) of the primary the archiver
   * streams from, once its loop has prepared it (its cluster's, WAL off its
   * history set aside); null meanwhile. The pusher puts a received history
   * only when it agrees with this one (see historyAgainstPrimary).
   */
  get preparedHistory(): readonly TimelineStep[] | null {
    return this.prepared !== null && this.prepared.target === this.target ? this.prepared.history : null;
  }

  /** Why the archiver refuses the primary's WAL (another cluster's than the archive's), for the cluster's health; null while it does not. */
  get refusal(): string | null {
    return this.refused?.reason ?? null;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    // A legacy wal/ planted (restored) while the archiver was stopped is drained at its next start too.
    this.legacyDrained = false;
    this.loop = this.run();
    this.holdTimer = setInterval(() => {
      this.holdPass ??= this.releasePushed()
        .catch((error: Error) =>
          this.options.logger.warn({ err: error.message }, "the archive's hold slot not moved, the spool not trimmed"),
        )
        .finally(() => (this.holdPass = null));
    }, HOLD_INTERVAL_MS);
    this.holdTimer.unref();
  }

  /** Streams from `primary` from now on (restarting the receiver when it changes). */
  follow(primary: NodeRef | null): void {
    if (primary?.name === this.target?.name && primary?.port === this.target?.port) return;
    this.target = primary;
    this.prepared = null;
    this.holdSeen = null;
    this.child?.kill("SIGTERM");
    this.wake?.();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.holdTimer) clearInterval(this.holdTimer);
    this.holdTimer = null;
    this.child?.kill("SIGTERM");
    this.wake?.();
    await this.loop;
    await this.holdPass;
  }

  /** Why the archiver does not receive because its spool is full, for the cluster's health; null while it receives. */
  get spoolFullReason(): string | null {
    return this.spoolIsFull
      ? `the WAL spool ${this.options.repository.spoolDir} is full (RELEVO_WAL_SPOOL_MAX): nothing is received until the repository takes what it holds`
      : null;
  }

  /**
   * Resolves once every segment from `fromLsn` to `toLsn`, along the history
   * of `timeline`, is archived complete; TIMEOUT otherwise. Along the
   * history: right after a failover a point before the branch (a backup's
   * stop, a reference point taken on a replica that had not replayed past
   * it) is in the old timeline's files; the new timeline's files start at
   * the segment the branch falls in. In `options.in` (a backup's target
   * repository: each has its own pusher), by default the lowest-numbered.
   */
  async waitForArchived(
    timeline: number,
    fromLsn: string,
    toLsn: string,
    timeoutMs: number,
    options: { readonly in?: Repository } = {},
  ): Promise<void> {
    const repository = options.in ?? this.options.repository;
    const deadline = Date.now() + timeoutMs;
    let polls = 0;
    for (;;) {
      const path = await this.archivedHistory(timeline, repository);
      // Archived = in the repository (pushed): asked of its index, a head for each name it lacks, never a listing per poll.
      const missing = await repository.archive.missing(
        segmentFilesAlong(path, fromLsn, toLsn).map((file) => segmentName(file.timeline, file.segment)),
      );
      if (missing.length === 0) return;
      if (Date.now() > deadline) {
        throw new RelevoError(
          ErrorCode.Timeout,
          `WAL not archived within ${timeoutMs} ms: missing ${missing.slice(0, 3).join(", ")}${missing.length > 3 ? "…" : ""}`,
        );
      }
      // Soon after the last segment switch it usually is there: look often
      // at first (every backup waits here), then settle to a few times a second.
      await sleep(Math.min(250, 20 * ++polls));
    }
  }

  /**
   * The history of `timeline` from the repository's archive (pg_receivewal
   * fetches it before the timeline's first segment, the pusher puts it
   * before segments); `timeline` alone while there is none.
   */
  private async archivedHistory(timeline: number, repository: Repository): Promise<TimelineStep[]> {
    if (timeline === 1) return timelinePath(1, null);
    return timelinePath(timeline, await repository.archivedHistory(timeline));
  }

  private async run(): Promise<void> {
    // The failure streak (see archiver-failures.ts): rounds in a row that did not stream.
    let failures = 0;
    while (!this.stopped) {
      const target = this.target;
      if (this.spoolIsFull) {
        await this.idle(HOLD_INTERVAL_MS);
        continue;
      }
      if (!target) {
        this.refused = null;
        await this.idle(1000);
        continue;
      }
      let ranMs = 0;
      try {
        await this.drainLegacyWal();
        if (await this.refusesWalOf(target)) {
          await this.idle(REFUSED_RECHECK_MS);
          continue;
        }
        await ensureArchiveSlot(target, this.options.superuser, this.options.nodeTimeoutMs);
        await this.startFromHoldWhenSpoolEmpty(target);
        const history = await this.setAsideDivergedWal(target);
        this.prepared = history && this.target === target ? { target, history } : null;
        if (history) await this.resumeAtArchiveEndWhenSpoolEmpty(target, history);
        if (history) await this.resumePastLostSlot(target, history);
        if (history) await this.startNextTimelineAtBoundary(target, history);
        // Stopped, or given another primary, while the round prepared: no receiver is started now. stop and follow
        // kill only a receiver that runs; one spawned after them would stream on unkilled, and stop would wait for
        // it for ever.
        if (this.stopped || this.target !== target) continue;
        const receiveStarted = Date.now();
        const exit = await this.receive(target);
        ranMs = Date.now() - receiveStarted;
        // Stopped for a full spool (see checkSpoolSize): not a failure.
        if (this.stopped || this.target !== target || this.spoolIsFull) continue;
        if (history && walRemovedBeforeArchive(exit.stderr) && (await this.resumePastRemovedWal(target, history))) continue;
        throw new Error(exit.reason);
      } catch (error) {
        const step = afterRound(failures, { ranMs, streamedAfterMs: streamedAfterMs(this.options.nodeTimeoutMs) });
        failures = step.failures;
        if (step.failing) {
          await this.options.events.emit({
            kind: "archive:failing",
            severity: "critical",
            node: target.name,
            message: `the WAL archiver cannot stream from ${target.name}: ${(error as Error).message}`,
            data: { error: (error as Error).message },
          });
        }
        this.options.logger.warn({ node: target.name, err: (error as Error).message, failures, ranMs }, "WAL archiver restarting");
        await this.idle(step.retryInMs);
        continue;
      }
    }
  }

  /**
   * A spool with no segment (lost, wiped, a new host) says nothing of what
   * was received and not pushed: the archive slot, which moved with what
   * pg_receivewal confirmed, may be past it, and the primary may have
   * recycled it for that slot. The hold slot moved only past what the
   * repository holds: the archive slot is made again as its copy, and
   * pg_receivewal (PostgreSQL 15) starts an empty directory at the slot's
   * restart_lsn, re-receiving what the spool lost. Nothing when the hold
   * slot is lost or absent (see releasePushed).
   */
  private async startFromHoldWhenSpoolEmpty(target: NodeRef): Promise<void> {
    const { repository, superuser, nodeTimeoutMs, logger } = this.options;
    const received = (await repository.spool.names()).filter((name) => parseSegmentName(name.replace(/\.partial$/, "")) !== null);
    if (received.length > 0) return;
    const copied = await withNodeClient(target, superuser, nodeTimeoutMs, async (client) => {
      const hold = await readHoldSlot(client);
      if (!hold || hold.lost || hold.restartLsn === null) return null;
      const archive = await client.query<{ lsn: string | null; active: boolean }>(
        "SELECT restart_lsn::text AS lsn, active FROM pg_replication_slots WHERE slot_name = $1",
        [ARCHIVE_SLOT],
      );
      // Only ever back: an archive slot behind its hold slot keeps more already.
      const archiveLsn = archive.rows[0]?.lsn ?? null;
      if (archiveLsn !== null && lsnToNumber(archiveLsn) <= lsnToNumber(hold.restartLsn)) return null;
      if (archive.rows[0]?.active) throw new Error(`the archive slot ${ARCHIVE_SLOT} on ${target.name} is still held by a walsender`);
      await client.query("SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1", [ARCHIVE_SLOT]);
      await client.query("SELECT pg_copy_physical_replication_slot($1, $2)", [HOLD_SLOT, ARCHIVE_SLOT]);
      return { from: archive.rows[0]?.lsn ?? null, to: hold.restartLsn };
    });
    if (copied) logger.warn({ node: target.name, ...copied }, "the spool holds no WAL: the archive slot restarts from its hold slot");
  }

  /**
   * Moves the hold slot past what the repository holds, drops from the
   * spool what the primary no longer keeps for it (see spoolDroppable), and
   * stops or resumes receiving by the spool's size. A lost hold slot (the
   * primary removed WAL it held, max_slot_wal_keep_size) is made again and
   * what neither the repository nor the spool holds before its new start
   * is an archive:gap.
   */
  async releasePushed(): Promise<void> {
    // A set-aside a repository missed while its store was down, done once it answers (its pusher waits for it).
    const unsettled = (await this.archivedWal.settle())?.message ?? null;
    if (unsettled !== null && unsettled !== this.lastUnsettled)
      this.options.logger.warn({ err: unsettled }, "WAL set aside in the other repositories still to set aside in one");
    this.lastUnsettled = unsettled;
    const target = this.target;
    if (this.stopped || !target || this.refused) return;
    // First: a repository that cannot be read or written (the very reason a spool fills) must not keep receiving going.
    await this.checkSpoolSize(target);
    // Only on a primary the loop has prepared: not one refused as another cluster's (no slot made there), and along its
    // history once the old branch is set aside (review 23).
    const prepared = this.prepared;
    if (prepared?.target !== target) return;
    const { superuser, nodeTimeoutMs } = this.options;
    const pushed = await this.pushedEverywhere();
    const seen = this.holdSeen;
    if (
      seen?.target === target &&
      Date.now() - seen.at < HOLD_RECHECK_MS &&
      holdAdvanceLsn(seen.restartLsn, pushed, prepared.history) === null
    ) {
      return;
    }
    const holdLsn = await withNodeClient(target, superuser, nodeTimeoutMs, async (client) => {
      let hold = await readHoldSlot(client);
      if (hold?.lost) {
        await client.query("SELECT pg_drop_replication_slot($1)", [HOLD_SLOT]);
        const archiveSlot = await client.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND restart_lsn IS NOT NULL", [
          ARCHIVE_SLOT,
        ]);
        // Made again as a copy of the archive slot (what pg_receivewal still receives), else reserving WAL at once.
        await ensureHoldSlot(client, ARCHIVE_SLOT);
        hold = await readHoldSlot(client);
        // The archive slot lost too: the archiver reports that hole from its side (resumePastLostSlot), once.
        if (archiveSlot.rows.length > 0 && hold?.restartLsn) await this.reportLostHold(client, target, hold.restartLsn, pushed);
      } else if (!hold) {
        await ensureHoldSlot(client, ARCHIVE_SLOT);
        hold = await readHoldSlot(client);
      }
      if (!hold?.restartLsn) return null;
      const to = holdAdvanceLsn(hold.restartLsn, pushed, prepared.history);
      if (to === null) return hold.restartLsn;
      await client.query("SELECT pg_replication_slot_advance($1, $2::pg_lsn)", [HOLD_SLOT, to]);
      return to;
    });
    this.holdSeen = holdLsn === null ? null : { target, restartLsn: holdLsn, at: Date.now() };
    if (holdLsn !== null) await this.trimSpool(holdLsn, pushed);
  }

  private async trimSpool(holdLsn: string, pushed: ReadonlySet<string>): Promise<void> {
    const { spool, objects, generation } = this.options.repository;
    const names = await spool.names();
    // Summaries listed only when something could go: a segment leaves the spool once summarised (cheaper there than from its object).
    if (spoolDroppable(names, { pushed: (name) => pushed.has(name), summarized: () => true, holdRestartLsn: holdLsn }).length === 0) return;
    const summarized = new Set(
      (await objects.list(walSummaryPrefix(generation)))
        .map((info) => summarizedSegmentOf(generation, info.key))
        .filter((name) => name !== null),
    );
    const droppable = spoolDroppable(names, {
      pushed: (name) => pushed.has(name),
      summarized: (name) => summarized.has(name),
      holdRestartLsn: holdLsn,
    });
    for (const name of droppable) await spool.remove(name);
  }

  private async checkSpoolSize(target: NodeRef): Promise<void> {
    const { repository, spoolMaxBytes, events, logger } = this.options;
    const files = await repository.spool.files(await repository.spool.names());
    const bytes = files.reduce((sum, file) => sum + file.bytes, 0);
    const full = spoolFull(this.spoolIsFull, bytes, spoolMaxBytes);
    if (full === this.spoolIsFull) return;
    this.spoolIsFull = full;
    const data = { bytes, maxBytes: spoolMaxBytes };
    if (full) {
      this.child?.kill("SIGTERM");
      logger.error({ node: target.name, ...data }, "the WAL spool is full: receiving stops until the repository takes what it holds");
      await events.emit({ kind: "archive:spool-full", severity: "critical", node: target.name, message: this.spoolFullReason!, data });
    } else {
      logger.info({ node: target.name, ...data }, "the WAL spool has room again: receiving resumes");
      await events.emit({
        kind: "archive:spool-cleared",
        severity: "info",
        node: target.name,
        message: `the WAL spool is below ${Math.round(spoolMaxBytes * 0.8)} bytes again: receiving resumes`,
        data,
      });
      this.wake?.();
    }
  }

  /** The hole a lost hold slot leaves: the segments before its new start neither in the repository nor in the spool. */
  private async reportLostHold(client: Client, target: NodeRef, restartLsn: string, pushed: ReadonlySet<string>): Promise<void> {
    const timeline = (await client.query<{ timeline: number }>(`SELECT ${CURRENT_TIMELINE_SQL} AS timeline`)).rows[0]!.timeline;
    const spooled = await this.options.repository.spool.names();
    const held = new Set([...pushed, ...spooled].map((name) => parseSegmentName(name.replace(/\.partial$/, ""))?.segment ?? -1));
    const pushedSegments = [...pushed].map((name) => parseSegmentName(name)?.segment ?? -1).filter((segment) => segment >= 0);
    const from = pushedSegments.length > 0 ? Math.max(...pushedSegments) + 1 : null;
    const until = Math.floor(lsnToNumber(restartLsn) / SEGMENT_SIZE);
    if (from === null) return;
    const missing: number[] = [];
    for (let segment = from; segment < until; segment++) if (!held.has(segment)) missing.push(segment);
    if (missing.length === 0) return;
    const gap = { timeline, from: segmentName(timeline, missing[0]!), to: segmentName(timeline, missing.at(-1)!) };
    this.options.logger.error(
      { node: target.name, ...gap },
      "the archive's hold slot was lost: the primary removed WAL the repository lacks",
    );
    await this.options.gaps.report(gap, `its hold slot on ${target.name} was lost (max_slot_wal_keep_size)`);
  }

  /**
   * The repository's wal/ of an older version (pg_receivewal wrote there
   * before the spool) into the archive's objects, before anything is
   * received: where streaming resumes and whose the archive is are decided
   * over the archive, which must hold it first. A failure fails the round
   * (retried): nothing is received past WAL not drained.
   */
  private async drainLegacyWal(): Promise<void> {
    if (this.legacyDrained) return;
    const { logger } = this.options;
    // Object storage never held a wal/: nothing to drain there.
    for (const repository of this.everyRepository) {
      if (repository.legacyWal === null) continue;
      await drainLegacyWal({
        legacy: repository.legacyWal,
        spool: repository.spool,
        objects: repository.objects,
        generation: repository.generation,
        index: repository.archive,
        logger,
        dataKey: await repository.archiveKey(),
      });
    }
    this.legacyDrained = true;
  }

  /**
   * Whether the archive belongs to another cluster than `target` (another
   * system identifier): its WAL is then not streamed (no slot, no
   * pg_receivewal), an `archive:foreign-cluster` event says so once, and
   * `refusal` gives the cluster's health its reason until the archive or the
   * primary changes. Without this the archiver would loop quietly on a
   * history it cannot follow.
   */
  private async refusesWalOf(target: NodeRef): Promise<boolean> {
    const { superuser, nodeTimeoutMs, events, logger } = this.options;
    const systemIdentifier = await withNodeClient(target, superuser, nodeTimeoutMs, readSystemIdentifier);
    // Every repository's that answers: WAL streamed into one that holds another cluster's archive would mix two
    // clusters there. One that cannot be read now is left out while another answers (its own pusher checks each
    // file against what it holds before a put), so one store down never stops receiving for the others; none
    // answering is the round's failure (an archive that cannot be read is never taken for an empty one).
    let refusal: { readonly reason: string; readonly archive: ArchiveIdentity } | null = null;
    const unread: Error[] = [];
    const repositories = this.everyRepository;
    for (const repository of repositories) {
      let archive: ArchiveIdentity | null;
      try {
        archive = await archiveIdentity(repository);
      } catch (error) {
        unread.push(error as Error);
        continue;
      }
      const reason = foreignWalRefusal({ name: target.name, systemIdentifier }, archive, repository.objects.location);
      if (reason !== null && archive !== null) {
        refusal = { reason, archive };
        break;
      }
    }
    if (refusal === null && unread.length === repositories.length) throw unread[0]!;
    if (unread.length > 0)
      logger.warn({ node: target.name, err: unread[0]!.message }, "a repository's archive identity is unreadable: decided over the others");
    if (refusal === null) {
      this.refused = null;
      return false;
    }
    const { reason, archive } = refusal;
    const key = `${target.name}:${systemIdentifier}:${archive.systemIdentifier}`;
    if (this.refused?.key !== key) {
      this.refused = { key, reason };
      logger.error({ node: target.name, systemIdentifier, archiveSystemIdentifier: archive.systemIdentifier }, reason);
      await events.emit({
        kind: "archive:foreign-cluster",
        severity: "critical",
        node: target.name,
        message: reason,
        data: { systemIdentifier, archiveSystemIdentifier: archive.systemIdentifier, archiveSource: archive.source },
      });
    }
    return true;
  }

  /**
   * pg_receivewal resumes after the newest file of the archive, on that
   * file's timeline: when the primary's history branched off before it (a
   * cluster rebuilt at an earlier point, a promoted replica that had not
   * received everything the archive holds), the primary refuses that start.
   * The archive's files past the branch point, of timelines off the
   * primary's history, move to wal/diverged/<time>/ (kept, not replayed) and
   * the archive resumes at the branch point. Returns the primary's history
   * when the archive follows it (null: unreadable, or an older timeline).
   */
  private async setAsideDivergedWal(target: NodeRef): Promise<TimelineStep[] | null> {
    let history: TimelineStep[];
    try {
      history = await withNodeClient(target, this.options.superuser, this.options.nodeTimeoutMs, async (client) => {
        const timeline = (await client.query<{ timeline: number }>(`SELECT ${CURRENT_TIMELINE_SQL} AS timeline`)).rows[0]!.timeline;
        return serverHistory(client, timeline);
      });
    } catch (error) {
      this.options.logger.warn(
        { node: target.name, err: (error as Error).message },
        "the primary's timeline history is unreadable: archive left as it is",
      );
      return null;
    }
    // Received and archived alike: a receiving directory lost alone must not hide what the repository holds.
    const names = await this.archivedWal.names();
    const timeline = history[history.length - 1]!.timeline;
    const newestArchived = Math.max(0, ...names.map((name) => parseSegmentName(name.replace(/\.partial$/, ""))?.timeline ?? 0));
    // A node behind the archive's newest timeline is not the primary of the
    // archive's history (an old primary seen for a moment): nothing moves.
    if (newestArchived > timeline) {
      this.options.logger.warn(
        { node: target.name, timeline, newestArchived },
        "the node's timeline is older than the archive's: archive left as it is",
      );
      return null;
    }
    const diverged = divergedFiles(names, history);
    if (diverged.length === 0) return history;
    // Through handles: wal/ is the PostgreSQL user's, and a wal/diverged planted as a link is refused, never followed;
    // the archive's objects are re-put under diverged/<time>/ (no rename on object storage).
    const aside = await this.archivedWal.setAside(diverged, divergedFolder());
    this.options.logger.warn(
      { node: target.name, files: aside.moved.length, aside: aside.path, timeline },
      "archived WAL off the primary's history set aside; the archive resumes at its branch point",
    );
    return history;
  }

  /**
   * The archiver's slot invalidated by max_slot_wal_keep_size (the archiver
   * was down or stalled while more WAL than that was written): the primary
   * removed WAL the archive never got, and pg_receivewal, resuming where the
   * archive ends, would be refused for ever ("requested WAL segment … has
   * already been removed"). The slot is made again (reserving from the
   * primary's last checkpoint, the oldest WAL it surely still has) and the
   * archive resumed past the hole (resumePastHole).
   *
   * Nothing is remembered across rounds: an archiver that dies after the
   * drop (or one in another instance, after the lease moved) finds a slot
   * that is not lost, and the hole through pg_receivewal's refusal instead
   * (resumePastRemovedWal).
   */
  private async resumePastLostSlot(target: NodeRef, history: readonly TimelineStep[]): Promise<void> {
    const { superuser, nodeTimeoutMs } = this.options;
    const resumeLsn = await withNodeClient(target, superuser, nodeTimeoutMs, async (client) => {
      const slot = await client.query<{ wal_status: string | null; active: boolean }>(
        "SELECT wal_status, active FROM pg_replication_slots WHERE slot_name = $1",
        [ARCHIVE_SLOT],
      );
      if (slot.rows[0]?.wal_status !== "lost") return null;
      // The walsender PostgreSQL ended when it invalidated the slot may still be exiting: dropped on a later round then.
      if (slot.rows[0].active) throw new Error(`the archive slot ${ARCHIVE_SLOT} on ${target.name} is lost and still held by a walsender`);
      await client.query("SELECT pg_drop_replication_slot($1)", [ARCHIVE_SLOT]);
      return archiveSlotStart(client);
    });
    if (resumeLsn !== null)
      await this.resumePastHole(target, history, resumeLsn, `its slot on ${target.name} was lost (max_slot_wal_keep_size)`);
  }

  /**
   * pg_receivewal was refused the WAL where the archive ends: the primary
   * removed it (the archive's slot lost and made again by an archiver that
   * died before resuming past the hole, or dropped by hand). The primary's
   * word is the durable fact: whichever archiver streams next hears it, and
   * resumes from the oldest WAL the archive's slot keeps. False when the
   * archive reaches that far (then the refusal is another matter).
   */
  private async resumePastRemovedWal(target: NodeRef, history: readonly TimelineStep[]): Promise<boolean> {
    const { superuser, nodeTimeoutMs } = this.options;
    const resumeLsn = await withNodeClient(target, superuser, nodeTimeoutMs, archiveSlotStart);
    return this.resumePastHole(target, history, resumeLsn, `${target.name} had removed WAL the archive lacks (its slot lost or dropped)`);
  }

  /**
   * When the archive ends before `resumeLsn` (the oldest WAL the primary
   * keeps for it), the hole is reported as `archive:gap` (point-in-time
   * recovery cannot cross it; once per gap, see ArchiveGaps) and an empty
   * .partial of the first segment the primary has makes pg_receivewal
   * resume there (see lostSlotGap). Should the report fail after the
   * placeholder, the archive monitor finds the gap between archived
   * segments later. False when nothing is missing.
   */
  private async resumePastHole(target: NodeRef, history: readonly TimelineStep[], resumeLsn: string, cause: string): Promise<boolean> {
    const { repository, logger } = this.options;
    const hole = lostSlotGap(await this.archivedWal.names(), history, resumeLsn);
    logger.error(
      { node: target.name, resumeLsn, gap: hole?.gap ?? null, cause },
      "the archive's WAL is gone on the primary: archiving resumes",
    );
    if (hole === null) return false;
    // Owned by the archive's owner, as pg_receivewal (maybe run as the PostgreSQL OS user) must write it.
    await repository.spool.create(hole.placeholder, "");
    await this.options.gaps.report(hole.gap, cause);
    return true;
  }

  /**
   * When the archive ends exactly where its timeline was left (see
   * timelineBoundaryPlaceholder), an empty .partial of the next timeline
   * makes pg_receivewal start there instead of asking for the old timeline's
   * end for ever.
   */
  /**
   * A spool without a segment (lost, wiped, another host) after the hold
   * slot could not be copied (a new primary: both slots just made): an
   * empty .partial where the repository's archive ends makes pg_receivewal
   * start there rather than at the new slot (see emptySpoolPlaceholder).
   */
  private async resumeAtArchiveEndWhenSpoolEmpty(target: NodeRef, history: readonly TimelineStep[]): Promise<void> {
    const { spool } = this.options.repository;
    // Where the repository furthest behind ends (one with an empty archive aside): the hold slot kept the primary's WAL
    // from there, and a start past it would leave that repository a hole for good (review 25, H2); the others take
    // again what they hold already as present.
    const spooled = await spool.names();
    const candidates = (
      await Promise.all(
        this.everyRepository.map(async (repository) => emptySpoolPlaceholder(spooled, await repository.archive.names(), history)),
      )
    ).filter((name): name is string => name !== null);
    const placeholder = candidates.sort((a, b) => segmentOf(a) - segmentOf(b))[0] ?? null;
    if (placeholder === null) return;
    await spool.create(placeholder, "");
    this.options.logger.warn(
      { node: target.name, placeholder },
      "the spool holds no WAL: streaming resumes where the repository's archive ends",
    );
  }

  private async startNextTimelineAtBoundary(target: NodeRef, history: readonly TimelineStep[]): Promise<void> {
    const { spool } = this.options.repository;
    const placeholder = timelineBoundaryPlaceholder(await this.archivedWal.names(), history);
    if (placeholder === null) return;
    // Owned by the archive's owner: pg_receivewal (maybe run as the PostgreSQL OS user) must open it for writing.
    // wal/ is that user's to write: created new and chowned through its handle, never by a path it may have swapped.
    await spool.create(placeholder, "");
    this.options.logger.info(
      { node: target.name, placeholder },
      "the archive ends at a timeline switch: streaming resumes on the next timeline",
    );
  }

  /** Runs pg_receivewal until it exits; returns why, and the end of what it wrote to stderr. */
  private receive(target: NodeRef): Promise<{ readonly reason: string; readonly stderr: string }> {
    const { repository, replication, identity, pgBinDir, caFile } = this.options;
    return new Promise((resolve) => {
      const child = spawnHostTool(
        path.join(pgBinDir, "pg_receivewal"),
        [
          "-D",
          repository.spoolDir,
          "-S",
          ARCHIVE_SLOT,
          "-d",
          conninfoString({
            host: target.host,
            port: target.port,
            user: replication.user,
            application_name: "relevo_archiver",
            ...libpqTlsParameters(caFile),
          }),
          "--no-password",
          "--no-loop",
          // Flush every write and report it at once: the archive is never behind what the primary confirmed to it.
          "--synchronous",
        ],
        { env: { PGPASSWORD: replication.password }, identity, stdio: ["ignore", "ignore", "pipe"] },
      );
      this.child = child;
      let stderr = "";
      child.stderr!.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
      child.on("error", (error) => resolve({ reason: error.message, stderr }));
      child.on("exit", (code, signal) => {
        this.child = null;
        resolve({ reason: `pg_receivewal exited (${signal ?? code}): ${stderr.trim().split("\n").pop() ?? ""}`, stderr });
      });
    });
  }

  private idle(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
}

/** The segment number of a WAL file name (a .partial's too). */
function segmentOf(name: string): number {
  return parseSegmentName(name.replace(/\.partial$/, ""))?.segment ?? Number.POSITIVE_INFINITY;
}
