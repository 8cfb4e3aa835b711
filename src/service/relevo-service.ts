import type { TrustAnchors } from "../postgres/connection";
import type Redis from "ioredis";
import { readFileSync } from "node:fs";
import path from "node:path";
import type { RunningApi } from "../api/server";
import type { BackupService } from "../backup/backup-service";
import type { NodeBootstrapOutcome } from "../cluster/bootstrap";
import type { TopologyCollector } from "../cluster/topology-collector";
import type { PrimaryDatabase } from "../db/primary-database";
import type { Consolidator } from "../events/consolidator";
import type { EventLog } from "../events/event-log";
import type { FailoverService } from "../failover/failover-service";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import type { RedisKeys } from "../redis/keys";
import type { BackupScheduler } from "../scheduler/backup-scheduler";
import type { Secrets } from "../secrets/secrets-store";
import type { LiveAuthority } from "../tls/live-authority";
import type { Repository } from "../storage/repository";
import type { RepositorySet } from "../storage/repository-set";
import { projectRoot } from "../util/project-root";
import type { ArchiveMonitor } from "../wal/archive-monitor";
import type { WalArchiver } from "../wal/wal-archiver";
import type { WalSummarizer } from "../wal/wal-summary";
import type { WalArchive, Storage } from "./backups-and-archive";
import type { Cleanups } from "./cleanups";
import type { CertificateRotation } from "../cluster/certificate-rotation";
import type { BootstrappedCluster, Members, Topology } from "./nodes-and-topology";
import type { RedisAndEvents } from "./redis-and-events";
import type { RedisEndpoint } from "../redis/redis-client";
import { stopService, type StopOptions } from "./stop";

export interface RelevoService {
  readonly apiUrl: string;
  readonly nodes: readonly NodeRef[];
  readonly driver: NodeDriver;
  readonly secrets: Secrets;
  /** The nodes' CA's certificates (PEM), as they are now: what every connection to a node verifies it against. */
  readonly trustedCa: TrustAnchors;
  /** The nodes' CA as this service issues and trusts with now (a rotation reloads it). */
  readonly authority: LiveAuthority;
  /** The nodes' CA's certificate file on this host (libpq's sslrootcert). */
  readonly caFile: string;
  /** The services CA's certificate file: what a client of the API (HTTPS) or of Relevo's Redis trusts, alone. */
  readonly servicesCaFile: string;
  /** The services CA as this service issues and trusts with now. */
  readonly servicesAuthority: LiveAuthority;
  readonly keys: RedisKeys;
  readonly redis: Redis;
  /** Where the cluster's Redis is, and the TLS this process's connections to it present and trust (as they are now). */
  readonly redisEndpoint: RedisEndpoint;
  readonly events: EventLog;
  readonly collector: TopologyCollector;
  readonly database: PrimaryDatabase;
  readonly consolidator: Consolidator;
  /** The lowest-numbered repository (repositories.first's). */
  readonly repository: Repository;
  /** Every configured repository, opened. */
  readonly repositories: RepositorySet;
  readonly archiver: WalArchiver;
  readonly walSummarizer: WalSummarizer;
  readonly backups: BackupService;
  readonly scheduler: BackupScheduler;
  readonly archiveMonitor: ArchiveMonitor;
  readonly failover: FailoverService;
  readonly certificates: CertificateRotation;
  readonly outcomes: readonly NodeBootstrapOutcome[];
  /** Stops the API, the collector, the consolidator and (unless told) Redis and every node. */
  stop(options?: StopOptions): Promise<void>;
}

const RELEVO_VERSION: string = (JSON.parse(readFileSync(path.join(projectRoot(), "package.json"), "utf8")) as { version: string }).version;

/** The last step of a start: `service:started` recorded, with the version, pid and driver. */
export async function announceStarted({ events, driver }: { readonly events: EventLog; readonly driver: NodeDriver }): Promise<void> {
  await events.emit({
    kind: "service:started",
    severity: "info",
    node: null,
    message: `Relevo ${RELEVO_VERSION} started (pid ${process.pid}, ${driver.kind} driver)`,
    data: { version: RELEVO_VERSION, pid: process.pid, driver: driver.kind },
  });
}

/** What the start steps started, as the service its callers hold; stop runs once, however often it is called. */
export function runningService(parts: {
  readonly cleanups: Cleanups;
  readonly driver: NodeDriver;
  readonly secrets: Secrets;
  readonly ca: LiveAuthority;
  readonly servicesCa: LiveAuthority;
  readonly redis: RedisAndEvents;
  readonly members: Members;
  readonly storage: Storage;
  readonly cluster: BootstrappedCluster;
  readonly archive: WalArchive;
  readonly topology: Topology;
  readonly backups: BackupService;
  readonly archiveMonitor: ArchiveMonitor;
  readonly scheduler: BackupScheduler;
  readonly failover: FailoverService;
  readonly certificates: CertificateRotation;
  readonly consolidator: Consolidator;
  readonly api: RunningApi;
}): RelevoService {
  const { cleanups, driver, secrets, ca, servicesCa, redis, members, storage, cluster, archive, topology } = parts;
  const { backups, archiveMonitor, scheduler, failover, certificates, consolidator, api } = parts;
  let stopping: Promise<void> | null = null;
  return {
    apiUrl: api.url,
    nodes: members.nodes,
    driver,
    secrets,
    trustedCa: ca.trust,
    authority: ca,
    caFile: ca.authority.certificateFile,
    servicesCaFile: servicesCa.authority.certificateFile,
    servicesAuthority: servicesCa,
    keys: redis.keys,
    redis: redis.client,
    redisEndpoint: redis.endpoint,
    events: redis.events,
    collector: topology.collector,
    database: topology.database,
    consolidator,
    repository: storage.repository,
    repositories: storage.repositories,
    archiver: archive.archiver,
    walSummarizer: archive.walSummarizer,
    backups,
    scheduler,
    archiveMonitor,
    failover,
    certificates,
    outcomes: cluster.outcomes,
    stop: (options = {}) => {
      stopping ??= stopService(
        { cleanups, redis, stopNodes: members.stopNodes, api, collector: topology.collector, consolidator },
        options,
      );
      return stopping;
    },
  };
}
