import type Redis from "ioredis";
import type { TopologyCollector } from "../cluster/topology-collector";
import type { TopologyReader } from "../cluster/topology-reader";
import type { EventLog } from "../events/event-log";
import type { RedisKeys } from "../events/keys";
import type { Logger } from "../log";
import type { TokenIdentity, TokenVerifier } from "../secrets/tokens";

/** Everything resolvers may use, injected when the schema is built. */
export interface ApiServices {
  readonly redis: Redis;
  readonly keys: RedisKeys;
  readonly events: EventLog;
  readonly collector: TopologyCollector;
  readonly topology: TopologyReader;
  readonly tokens: TokenVerifier;
  readonly logger: Logger;
}

/** Per request (or per WebSocket connection). */
export interface ApiContext {
  readonly identity: TokenIdentity;
}
