/**
 * Every event kind with its payload. The same map types the Redis stream, the
 * pub/sub messages, the consolidated `events` rows and the GraphQL field
 * `ClusterEvent.data`.
 */
export interface EventMap {
  "service:started": { version: string; pid: number; driver: string };
  "service:stopping": { reason: string };
  "node:created": { role: "primary" | "replica"; upstream: string | null };
  "node:started": Record<string, never>;
  "node:up": Record<string, never>;
  "node:down": { error: string };
  "node:role-changed": { from: string; to: string };
  "replication:streaming-lost": { state: string };
  "replication:streaming-restored": Record<string, never>;
  "replication:lag-high": { lagBytes: number; thresholdBytes: number };
  "replication:lag-normal": { lagBytes: number; thresholdBytes: number };
  "cluster:primary-changed": { from: string | null; to: string | null };
  "api:mutation": { operation: string | null; fields: string[] };
  "archive:failing": { error: string };
  "archive:gap": { timeline: number; from: string; to: string };
  "archive:lagging": { lagBytes: number };
  "backup:started": BackupRecord;
  "backup:completed": BackupRecord & { durationMs: number };
  "backup:failed": BackupRecord;
  "backup:verified": { id: string; ok: boolean; badFiles: string[]; restoreTested: boolean };
  "backup:expired": BackupRecord;
  "backup:cataloged": BackupRecord;
  "schedule:skipped": { name: string; reason: string };
  "schedule:failed": { name: string; error: string; attempt: number; retryInMs: number | null };
}

/** What the catalog keeps of a backup; carried by every backup event so that the consolidator can upsert it. */
export interface BackupRecord {
  id: string;
  type: string;
  status: string;
  source: string | null;
  reference: string | null;
  timeline: number | null;
  startLsn: string | null;
  stopLsn: string | null;
  sizeBytes: number | null;
  storedBytes: number | null;
  error: string | null;
  startedAt: string;
  finishedAt: string | null;
}

export type EventKind = keyof EventMap;

export type Severity = "info" | "warning" | "critical";

export interface Actor {
  readonly id: string;
  readonly role: string;
}

/** An event as the code emits it. */
export interface EventDraft<K extends EventKind = EventKind> {
  readonly kind: K;
  readonly severity: Severity;
  readonly node: string | null;
  readonly message: string;
  readonly data: EventMap[K];
  readonly actor?: Actor | null;
}

/** An event once emitted: id and time assigned, stream position known. */
export interface ClusterEvent<K extends EventKind = EventKind> extends EventDraft<K> {
  readonly id: string;
  readonly streamId: string;
  readonly occurredAt: string;
  readonly actor: Actor | null;
}

export const EVENT_KINDS: readonly EventKind[] = [
  "service:started",
  "service:stopping",
  "node:created",
  "node:started",
  "node:up",
  "node:down",
  "node:role-changed",
  "replication:streaming-lost",
  "replication:streaming-restored",
  "replication:lag-high",
  "replication:lag-normal",
  "cluster:primary-changed",
  "api:mutation",
  "archive:failing",
  "archive:gap",
  "archive:lagging",
  "backup:started",
  "backup:completed",
  "backup:failed",
  "backup:verified",
  "backup:expired",
  "backup:cataloged",
  "schedule:skipped",
  "schedule:failed",
];
