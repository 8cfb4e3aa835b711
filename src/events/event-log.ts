import { randomUUID } from "node:crypto";
import type Redis from "ioredis";
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
const SCAN_BATCH = 500;
const MAX_SCANNED = 50000;

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

  async page(options: EventPageOptions): Promise<EventPage> {
    return redisCall("reading events", async () => {
      const matches: ClusterEvent[] = [];
      let end = options.after ? `(${options.after}` : "+";
      let scanned = 0;
      while (matches.length <= options.first && scanned < MAX_SCANNED) {
        const batch = await this.redis.xrevrange(this.keys.events, end, "-", "COUNT", SCAN_BATCH);
        if (batch.length === 0) break;
        scanned += batch.length;
        for (const [streamId, fields] of batch) {
          const event = decode(streamId, fields);
          if (event && matchesFilter(event, options)) matches.push(event);
          if (matches.length > options.first) break;
        }
        end = `(${batch[batch.length - 1]![0]}`;
        if (batch.length < SCAN_BATCH) break;
      }
      return { events: matches.slice(0, options.first), hasNextPage: matches.length > options.first };
    });
  }

  private async append(pending: { draft: EventDraft; id: string; occurredAt: string }): Promise<ClusterEvent> {
    const body = JSON.stringify({ ...pending.draft, id: pending.id, occurredAt: pending.occurredAt, actor: pending.draft.actor ?? null });
    const streamId = await this.redis.xadd(this.keys.events, "MAXLEN", "~", String(this.maxLength), "*", "event", body);
    const event = decode(streamId!, ["event", body])!;
    this.publisher.publish(this.keys.eventsChannel, event);
    return event;
  }

  private enqueue(pending: { draft: EventDraft; id: string; occurredAt: string }): void {
    if (this.buffered.length >= MAX_BUFFERED) {
      const dropped = this.buffered.shift();
      this.logger.error({ kind: dropped?.draft.kind }, "event buffer full while Redis is unavailable: oldest event dropped");
    }
    this.buffered.push(pending);
  }

  private async flush(): Promise<void> {
    if (this.flushing) return;
    this.flushing = true;
    try {
      while (this.buffered.length > 0) {
        await this.append(this.buffered[0]!);
        this.buffered.shift();
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
