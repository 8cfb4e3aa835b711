import { createRedisEventTarget } from "@graphql-yoga/redis-event-target";
import { createPubSub } from "@graphql-yoga/subscription";
import type Redis from "ioredis";
import type { EventPublisher } from "./event-log";

export type RedisPubSub = ReturnType<typeof createPubSub>;

/**
 * Pub/sub through Redis, so that every API instance sees every event. The
 * event target fires `publish` and forgets the promise; while Redis is away
 * that promise rejects, so the publish side is wrapped to swallow it (the
 * event itself is safe in the stream or the EventLog's buffer). The
 * subscriber connection queues commands while offline and ioredis
 * re-subscribes after a reconnect.
 */
export function createRedisPubSub(publishClient: Redis, subscribeClient: Redis): RedisPubSub {
  const publisher = {
    publish: (channel: string, message: string) => publishClient.publish(channel, message).catch(() => 0),
  } as unknown as Redis;
  return createPubSub({ eventTarget: createRedisEventTarget({ publishClient: publisher, subscribeClient }) });
}

export function publisherOf(pubSub: RedisPubSub): EventPublisher {
  return {
    publish: (topic, payload) => (pubSub.publish as (topic: string, payload: unknown) => void)(topic, payload),
  };
}
