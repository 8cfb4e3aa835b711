import os from "node:os";
import type Redis from "ioredis";
import type { PrimaryDatabase, PrismaClient } from "../db/primary-database";
import type { Prisma } from "../generated/prisma/client";
import type { Logger } from "../log";
import { sleep } from "../util/sleep";
import { decode } from "./event-log";
import type { BackupRecord, ClusterEvent, FailoverRecord } from "./event-map";
import { CONSOLIDATOR_GROUP, type RedisKeys } from "../redis/keys";

export interface ConsolidatorOptions {
  readonly batchSize?: number;
  readonly blockMs?: number;
  /** Pending entries of a consumer silent this long are taken over (a crashed instance). */
  readonly claimIdleMs?: number;
  readonly retryDelayMs?: number;
  /**
   * Events the stream keeps once consolidated (RELEVO_EVENTS_MAX_LENGTH); 0:
   * the consolidator never trims. Only the consolidator trims to this: it
   * knows what is consolidated (appending trims only far beyond it).
   */
  readonly keepLength?: number;
}

type StreamReply = Array<[string, Array<[string, string[]]>]> | null;

/**
 * Copies the events stream into PostgreSQL: reads through a consumer group,
 * upserts by event id (a replay never duplicates a row) and XACKs only after
 * the write committed. When the primary is unreachable nothing is
 * acknowledged: the entries stay pending in Redis and are retried from the
 * start of this consumer's pending list once a write succeeds again.
 */
export class Consolidator {
  private running = false;
  private loop: Promise<void> | null = null;
  private readonly consumer = `${os.hostname()}-${process.pid}`;
  private readonly options: Required<ConsolidatorOptions>;
  private consolidated = 0;

  constructor(
    private readonly redis: Redis, // a dedicated connection: XREADGROUP blocks it
    private readonly keys: RedisKeys,
    private readonly database: PrimaryDatabase,
    private readonly logger: Logger,
    options: ConsolidatorOptions = {},
  ) {
    this.options = { batchSize: 200, blockMs: 1000, claimIdleMs: 30000, retryDelayMs: 1000, keepLength: 0, ...options };
  }

  get consolidatedCount(): number {
    return this.consolidated;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
    this.loop = null;
  }

  private async run(): Promise<void> {
    let pendingFirst = true; // after a start or a failure, our own unacknowledged entries come first
    let lastClaim = 0;
    while (this.running) {
      try {
        await this.ensureGroup();
        if (pendingFirst && Date.now() - lastClaim > this.options.claimIdleMs / 3) {
          await this.claimAbandoned();
          lastClaim = Date.now();
        }
        if (this.replayFrom !== null) await this.replay();
        const events = await this.read(pendingFirst ? "0" : ">");
        if (events.length === 0) {
          pendingFirst = false;
          continue;
        }
        await this.write(events);
        await this.redis.xack(this.keys.events, CONSOLIDATOR_GROUP, ...events.map((event) => event.streamId));
        this.consolidated += events.length;
        if (!pendingFirst && events.length < this.options.batchSize) await this.trim();
      } catch (error) {
        pendingFirst = true;
        this.logger.warn({ err: (error as Error).message }, "events not consolidated yet; retrying");
        await sleep(this.options.retryDelayMs);
      }
    }
  }

  /** Trims the stream to `keepLength` once everything in it is consolidated (see trimConsolidated). */
  private async trim(): Promise<void> {
    if (this.options.keepLength <= 0) return;
    await trimConsolidated(this.redis, { stream: this.keys.events, group: CONSOLIDATOR_GROUP, keepLength: this.options.keepLength });
  }

  private groupReady = false;
  private replayFrom: number | null = null;

  /**
   * Writes the entries of the last `windowMs` again on the next round: after
   * a change of primary, what was acknowledged on an asynchronous primary
   * shortly before it died may never have reached the replica that replaced
   * it. Upserts and skipped duplicates make the replay harmless.
   */
  replayRecent(windowMs: number): void {
    const from = Date.now() - windowMs;
    this.replayFrom = this.replayFrom === null ? from : Math.min(this.replayFrom, from);
  }

  private async replay(): Promise<void> {
    const from = this.replayFrom!;
    const entries = (await this.redis.xrange(this.keys.events, `${from}-0`, "+")) as Array<[string, string[]]>;
    const events = entries.map(([streamId, fields]) => decode(streamId, fields)).filter((event): event is ClusterEvent => event !== null);
    for (let i = 0; i < events.length; i += this.options.batchSize) await this.write(events.slice(i, i + this.options.batchSize));
    this.replayFrom = null;
    if (events.length > 0) this.logger.info({ events: events.length }, "recent events consolidated again on the new primary");
  }

  private async ensureGroup(): Promise<void> {
    if (this.groupReady) return;
    try {
      await this.redis.xgroup("CREATE", this.keys.events, CONSOLIDATOR_GROUP, "0", "MKSTREAM");
    } catch (error) {
      if (!String((error as Error).message).includes("BUSYGROUP")) throw error;
    }
    this.groupReady = true;
  }

  private async claimAbandoned(): Promise<void> {
    await this.redis.xautoclaim(
      this.keys.events,
      CONSOLIDATOR_GROUP,
      this.consumer,
      this.options.claimIdleMs,
      "0-0",
      "COUNT",
      this.options.batchSize,
    );
  }

  private async read(from: "0" | ">"): Promise<ClusterEvent[]> {
    const args: Array<string | number> = ["GROUP", CONSOLIDATOR_GROUP, this.consumer, "COUNT", this.options.batchSize];
    if (from === ">") args.push("BLOCK", this.options.blockMs);
    args.push("STREAMS", this.keys.events, from);
    const reply = (await this.redis.call("XREADGROUP", ...args)) as StreamReply;
    const entries = reply?.[0]?.[1] ?? [];
    const events: ClusterEvent[] = [];
    const unreadable: string[] = [];
    for (const [streamId, fields] of entries) {
      const event = fields ? decode(streamId, fields) : null;
      if (event) events.push(event);
      else unreadable.push(streamId);
    }
    // Trimmed or malformed entries can never be written: acknowledge them so they do not block the group.
    if (unreadable.length > 0) await this.redis.xack(this.keys.events, CONSOLIDATOR_GROUP, ...unreadable);
    return events;
  }

  private async write(events: ClusterEvent[]): Promise<void> {
    const prisma = await this.database.client();
    // Records derived from events go first, in stream order, each an idempotent
    // upsert: a replay writes the same values again.
    for (const event of events) {
      if (BACKUP_RECORD_KINDS.has(event.kind)) {
        await upsertBackup(prisma, event.data as BackupRecord);
      } else if (event.kind.startsWith("failover:")) {
        await upsertFailover(prisma, event.data as FailoverRecord);
      }
    }
    await prisma.event.createMany({
      data: events.map((event): Prisma.EventCreateManyInput => ({
        id: event.id,
        streamId: event.streamId,
        kind: event.kind,
        severity: event.severity,
        node: event.node,
        message: event.message,
        // Plain JSON; its interfaces lack the index signature Prisma's JSON input type asks for.
        data: event.data as Prisma.InputJsonObject,
        actorId: event.actor?.id ?? null,
        actorRole: event.actor?.role ?? null,
        occurredAt: new Date(event.occurredAt),
      })),
      skipDuplicates: true,
    });
  }
}

/**
 * Checks and trims in one step (a script runs alone): the group has no entry
 * pending and none after its last delivered one, so every entry in the
 * stream is acknowledged, and only then MAXLEN drops the oldest. Checked in
 * separate round trips, entries appended in between were neither delivered
 * nor pending, and a burst larger than the bound lost its oldest before
 * PostgreSQL had them. -1: not trimmed.
 */
const TRIM_CONSOLIDATED = `
for _, fields in ipairs(redis.call("XINFO", "GROUPS", KEYS[1])) do
  local group = {}
  for i = 1, #fields, 2 do group[fields[i]] = fields[i + 1] end
  if group["name"] == ARGV[1] then
    if tonumber(group["pending"]) ~= 0 then return -1 end
    if #redis.call("XRANGE", KEYS[1], "(" .. group["last-delivered-id"], "+", "COUNT", 1) > 0 then return -1 end
    return redis.call("XTRIM", KEYS[1], "MAXLEN", "~", ARGV[2])
  end
end
return -1`;

/**
 * Trims a stream to about `keepLength` entries when `group` has read and
 * acknowledged every entry in it; null when it has not (nothing removed).
 * The entries removed are then all in PostgreSQL.
 */
export async function trimConsolidated(
  redis: Redis,
  options: { readonly stream: string; readonly group: string; readonly keepLength: number },
): Promise<number | null> {
  const removed = (await redis.eval(TRIM_CONSOLIDATED, 1, options.stream, options.group, String(options.keepLength))) as number;
  return removed < 0 ? null : removed;
}

const BACKUP_RECORD_KINDS = new Set<string>(["backup:started", "backup:completed", "backup:failed", "backup:expired", "backup:cataloged"]);

async function upsertBackup(prisma: PrismaClient, record: BackupRecord): Promise<void> {
  const values = {
    type: record.type,
    status: record.status,
    source: record.source,
    reference: record.reference,
    timeline: record.timeline,
    startLsn: record.startLsn,
    stopLsn: record.stopLsn,
    sizeBytes: record.sizeBytes === null ? null : BigInt(record.sizeBytes),
    storedBytes: record.storedBytes === null ? null : BigInt(record.storedBytes),
    error: record.error,
    startedAt: new Date(record.startedAt),
    finishedAt: record.finishedAt === null ? null : new Date(record.finishedAt),
  };
  // A late "started" replayed after "completed" must not move the record back.
  if (movesBack(await prisma.backup.findUnique({ where: { id: record.id }, select: { status: true } }), record.status)) return;
  await prisma.backup.upsert({ where: { id: record.id }, create: { id: record.id, ...values }, update: values });
}

async function upsertFailover(prisma: PrismaClient, record: FailoverRecord): Promise<void> {
  const date = (value: string | null): Date | null => (value === null ? null : new Date(value));
  const values = {
    kind: record.kind,
    trigger: record.trigger,
    fromNode: record.from,
    toNode: record.to,
    status: record.status,
    reason: record.reason,
    error: record.error,
    lostBytes: record.lostBytes === null ? null : BigInt(record.lostBytes),
    startedAt: new Date(record.startedAt),
    fencedAt: date(record.fencedAt),
    promotedAt: date(record.promotedAt),
    finishedAt: date(record.finishedAt),
    durationMs: record.durationMs,
  };
  // A replayed stage event must not move a finished record back to running.
  if (movesBack(await prisma.failover.findUnique({ where: { id: record.id }, select: { status: true } }), record.status)) return;
  await prisma.failover.upsert({ where: { id: record.id }, create: { id: record.id, ...values }, update: values });
}

/** A replayed "running" record arriving after the finished one: writing it would move the record back. */
function movesBack(existing: { status: string } | null, incoming: string): boolean {
  return existing !== null && existing.status !== "running" && incoming === "running";
}
