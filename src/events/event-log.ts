import { randomUUID } from "node:crypto";
import type Redis from "ioredis";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import { redisCall } from "../redis/redis-client";
import type { ClusterEvent, EventDraft, EventKind } from "./event-map";
import type { RedisKeys } from "../redis/keys";

/** Where emitted events are announced (subscriptions); Redis-backed pub/sub in the service. */
export interface EventPublisher {
  publish(topic: string, payload: unknown): void;
}

export interface EventPageOptions {
  readonly first: number;
  /** Stream id of the last event of the previous page (exclusive). */
  readonly after?: string | null;
  readonly kinds?: readonly EventKind[] | null;
  readonly node?: string | null;
}

export interface EventPage {
  readonly events: ClusterEvent[];
  readonly hasNextPage: boolean;
}

const MAX_BUFFERED = 10000;

/** An event of the API's (`api:refused`, `api:mutation`): the first dropped from a full buffer. */
function isApiEvent(kind: string): boolean {
  return kind.startsWith("api:");
}
/**
 * The stream keeps `maxLength` events once they are consolidated (the
 * consolidator trims it, see Consolidator.trim), and up to this many times
 * that while they are not (the primary away): appending never trims away
 * what PostgreSQL does not have yet, unless the backlog outgrows this bound
 * (Redis's memory is finite too).
 */
export const UNCONSOLIDATED_LENGTH_FACTOR = 5;
const SCAN_BATCH = 500;
/** Stream entries one page may scan, and one EventStreamReads may read in all. */
export const MAX_SCANNED = 50000;

interface StreamBatch {
  /** Decoded entries, newest first; null for an entry that is not an event. */
  readonly events: ReadonlyArray<ClusterEvent | null>;
  readonly lastStreamId: string;
}

/**
 * The stream batches read for one API request, shared by its pages: aliases
 * that page from the same point (whatever their filters) read and decode the
 * stream once. A request's distinct reads are bounded in all by MAX_SCANNED
 * entries, which one page's scan never exceeds alone: past it the request is
 * refused with QUERY_TOO_COMPLEX instead of keeping the event loop (which
 * the failover monitor shares) busy.
 */
export class EventStreamReads {
  private readonly batches = new Map<string, Promise<StreamBatch>>();
  /**
   * Entries read so far. Counted as they arrive, not as asked for, so that a
   * short stream does not look long; reads started together may pass the
   * bound by one batch each, which the fields' cost limit keeps to a few.
   */
  private entriesRead = 0;

  batch(end: string, count: number, read: () => Promise<Array<[string, string[]]>>): Promise<StreamBatch> {
    const key = `${end} ${count}`;
    const known = this.batches.get(key);
    if (known) return known;
    if (this.entriesRead + count > MAX_SCANNED) {
      throw new RelevoError(
        ErrorCode.QueryTooComplex,
        `the event queries of this request would read more than ${MAX_SCANNED} stream entries; ask for fewer pages, or page with after`,
        { details: { maxScanned: MAX_SCANNED } },
      );
    }
    const pending = read().then((entries) => {
      this.entriesRead += entries.length;
      return {
        events: entries.map(([streamId, fields]) => decode(streamId, fields)),
        lastStreamId: entries[entries.length - 1]?.[0] ?? "",
      };
    });
    this.batches.set(key, pending);
    return pending;
  }
}

/**
 * The events stream: every event is appended to a Redis stream (the
 * consolidator copies it into PostgreSQL) and published for subscribers.
 * While Redis is away, events wait in a bounded in-memory buffer and are
 * appended when it is back, so an outage does not swallow e.g. `node:down`.
 */
export class EventLog {
  private readonly buffered: Array<{ draft: EventDraft; id: string; occurredAt: string }> = [];
  private flushing = false;

  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
    private readonly publisher: EventPublisher,
    private readonly maxLength: number,
    private readonly logger: Logger,
  ) {
    redis.on("ready", () => void this.flush());
  }

  async emit<K extends EventKind>(draft: EventDraft<K>): Promise<ClusterEvent<K> | null> {
    const pending = { draft, id: randomUUID(), occurredAt: new Date().toISOString() };
    this.logger.info({ kind: draft.kind, node: draft.node, severity: draft.severity }, draft.message);
    if (this.buffered.length > 0) {
      this.enqueue(pending);
      void this.flush();
      return null;
    }
    try {
      return (await this.append(pending)) as ClusterEvent<K>;
    } catch {
      this.enqueue(pending);
      return null;
    }
  }

  get bufferedCount(): number {
    return this.buffered.length;
  }

  /**
   * A page of events, newest first. Without a filter it reads just the page
   * (and one more, for hasNextPage); with one it scans back in batches, at
   * most MAX_SCANNED entries. `reads` shares the batches between the pages
   * one request asks for (see EventStreamReads).
   */
  async page(options: EventPageOptions, reads: EventStreamReads = new EventStreamReads()): Promise<EventPage> {
    const filtered = (options.kinds?.length ?? 0) > 0 || Boolean(options.node);
    const matches: ClusterEvent[] = [];
    let end = options.after ? `(${options.after}` : "+";
    let scanned = 0;
    while (matches.length <= options.first && scanned < MAX_SCANNED) {
      const count = filtered ? SCAN_BATCH : Math.min(SCAN_BATCH, options.first + 1 - matches.length);
      const batch = await reads.batch(end, count, () =>
        redisCall("reading events", () => this.redis.xrevrange(this.keys.events, end, "-", "COUNT", count)),
      );
      if (batch.events.length === 0) break;
      scanned += batch.events.length;
      for (const event of batch.events) {
        if (event && matchesFilter(event, options)) matches.push(event);
        if (matches.length > options.first) break;
      }
      end = `(${batch.lastStreamId}`;
      if (batch.events.length < count) break;
    }
    return { events: matches.slice(0, options.first), hasNextPage: matches.length > options.first };
  }

  private async append(pending: { draft: EventDraft; id: string; occurredAt: string }): Promise<ClusterEvent> {
    const body = JSON.stringify({ ...pending.draft, id: pending.id, occurredAt: pending.occurredAt, actor: pending.draft.actor ?? null });
    const bound = String(this.maxLength * UNCONSOLIDATED_LENGTH_FACTOR);
    const streamId = await this.redis.xadd(this.keys.events, "MAXLEN", "~", bound, "*", "event", body);
    const event = decode(streamId!, ["event", body])!;
    this.publisher.publish(this.keys.eventsChannel, event);
    return event;
  }

  private enqueue(pending: { draft: EventDraft; id: string; occurredAt: string }): void {
    this.buffered.push(pending);
    if (this.buffered.length <= MAX_BUFFERED) return;
    // The API's events go first: any client can cause them (refusals counted per address), and they must not
    // push out what the cluster did during the outage (a node:down, a failover's steps).
    const apiEvent = this.buffered.findIndex((buffered) => isApiEvent(buffered.draft.kind));
    const [dropped] = this.buffered.splice(apiEvent >= 0 ? apiEvent : 0, 1);
    this.logger.error({ kind: dropped?.draft.kind }, "event buffer full while Redis is unavailable: an event dropped");
  }

  private async flush(): Promise<void> {
    if (this.flushing) return;
    this.flushing = true;
    try {
      while (this.buffered.length > 0) {
        const next = this.buffered[0]!;
        await this.append(next);
        // By identity, not position: a full buffer may have dropped events meanwhile (enqueue).
        const index = this.buffered.indexOf(next);
        if (index >= 0) this.buffered.splice(index, 1);
      }
    } catch {
      // Redis went away again; the next "ready" resumes
    } finally {
      this.flushing = false;
    }
  }
}

export function decode(streamId: string, fields: string[]): ClusterEvent | null {
  const index = fields.indexOf("event");
  if (index < 0) return null;
  try {
    const body = JSON.parse(fields[index + 1]!) as Omit<ClusterEvent, "streamId">;
    return { ...body, streamId };
  } catch {
    return null;
  }
}

function matchesFilter(event: ClusterEvent, options: EventPageOptions): boolean {
  if (options.kinds && options.kinds.length > 0 && !options.kinds.includes(event.kind)) return false;
  if (options.node && event.node !== options.node) return false;
  return true;
}
