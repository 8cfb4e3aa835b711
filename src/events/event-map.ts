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
  "api:mutation": { operation: string | null; fields: string[]; calls: number };
  "api:refused": { count: number; codes: string[]; first: boolean; windowMs: number; address?: string; others?: boolean };
  "archive:failing": { error: string };
  "archive:gap": { timeline: number; from: string; to: string };
  "archive:lagging": { lagBytes: number };
  "archive:foreign-cluster": { systemIdentifier: string; archiveSystemIdentifier: string; archiveSource: string };
  "archive:timeline-reused": { timeline: number; files: string[]; setAside: string };
  "archive:spool-full": { bytes: number; maxBytes: number };
  "archive:spool-cleared": { bytes: number; maxBytes: number };
  "archive:push-failing": { repository: string; error: string; failingSince: string };
  "repository:pending": { repository: number; error: string };
  "repository:opened": { repository: number };
  "archive:push-recovered": { repository: string; failedForMs: number };
  "archive:refused-file": { file: string; reason: string };
  "backup:started": BackupRecord;
  "backup:completed": BackupRecord & { durationMs: number };
  "backup:failed": BackupRecord;
  "backup:verified": { id: string; ok: boolean; badFiles: string[]; restoreTested: boolean };
  "backup:expired": BackupRecord;
  "backup:expiry-held-back": { id: string; holder: { purpose: string; host: string; pid: number; since: string }; heldForMs: number };
  "backup:cataloged": BackupRecord;
  "backup:copied": { id: string; repository: number; storedBytes: number; durationMs: number };
  "backup:copy-failed": { id: string; repository: number; reason: string };
  "restore:repository-failed": {
    backupId: string;
    target: string;
    repository: number;
    location: string;
    code: string;
    error: string;
    next: number;
  };
  "schedule:skipped": { name: string; reason: string };
  "schedule:failed": { name: string; error: string; attempt: number; retryInMs: number | null };
  "failover:detected": FailoverRecord;
  "failover:fenced": FailoverRecord;
  "failover:promoting": FailoverRecord;
  "failover:promoted": FailoverRecord;
  "failover:completed": FailoverRecord;
  "failover:failed": FailoverRecord;
  "node:fenced": { method: string; reason: string };
  "node:rejoined": { method: "rewind" | "reseed" | "restart"; upstream: string; durationMs: number };
  "node:rejoin-failed": { error: string };
  "node:removed": { slotDropped: boolean };
  "node:replay-resumed": { state: string; pausedForMs: number };
  "cluster:split-brain": { writable: string[]; recordedPrimary: string };
  "cluster:maintenance": { enabled: boolean };
  "cluster:failover-held-back": { reason: string; recordedPrimary: string };
  "cluster:primary-adopted": { adopted: string; recordedPrimary: string; reason: string };
  "replication:sync-changed": { standbys: string[]; added: string[]; removed: string[] };
  "replication:slot-lost": { slot: string; upstream: string; action: "bridge" | "reseed"; reason: string };
  "tls:rotated": {
    ca: "kept" | "begun" | "finished";
    renewed: string[];
    pending: string[];
    refused: string[];
    failed: string[];
    /** After a finish: holders whose renewal was refused or failed, so that their trust may still hold the old CA. */
    oldCaTrustedBy: string[];
  };
  "tls:expiring": {
    holder: string;
    serial: string;
    notAfter: string;
    action: "renewed" | "renewal-failed" | "at-next-start" | "reported" | "rotation-begun";
  };
}

/**
 * A change of primary (failover, switchover, failback) as the catalog keeps
 * it: carried by every failover event so that the consolidator can upsert it.
 */
export interface FailoverRecord {
  id: string;
  kind: "failover" | "switchover" | "failback";
  trigger: "automatic" | "manual";
  from: string;
  to: string | null;
  status: "running" | "completed" | "failed";
  reason: string;
  error: string | null;
  /** Bytes of WAL the old primary had written that the promoted node never received (asynchronous mode); null when unknown. */
  lostBytes: number | null;
  startedAt: string;
  fencedAt: string | null;
  promotedAt: string | null;
  finishedAt: string | null;
  durationMs: number | null;
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
  "api:refused",
  "archive:failing",
  "archive:gap",
  "archive:lagging",
  "archive:foreign-cluster",
  "archive:timeline-reused",
  "archive:spool-full",
  "archive:spool-cleared",
  "archive:push-failing",
  "repository:pending",
  "repository:opened",
  "archive:push-recovered",
  "archive:refused-file",
  "backup:started",
  "backup:completed",
  "backup:failed",
  "backup:verified",
  "backup:expired",
  "backup:expiry-held-back",
  "backup:cataloged",
  "backup:copied",
  "backup:copy-failed",
  "restore:repository-failed",
  "schedule:skipped",
  "schedule:failed",
  "failover:detected",
  "failover:fenced",
  "failover:promoting",
  "failover:promoted",
  "failover:completed",
  "failover:failed",
  "node:fenced",
  "node:rejoined",
  "node:rejoin-failed",
  "node:removed",
  "node:replay-resumed",
  "cluster:split-brain",
  "cluster:maintenance",
  "cluster:failover-held-back",
  "cluster:primary-adopted",
  "replication:sync-changed",
  "replication:slot-lost",
  "tls:rotated",
  "tls:expiring",
];
