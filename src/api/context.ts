import type Redis from "ioredis";
import type { CertificateRotation } from "../cluster/certificate-rotation";
import type { BackupService } from "../backup/backup-service";
import type { RepositoryReporter } from "../repository/repository-report";
import type { FailoverService } from "../failover/failover-service";
import type { NodeRef } from "../nodes/node-driver";
import type { BackupScheduler } from "../scheduler/backup-scheduler";
import type { TopologyCollector } from "../cluster/topology-collector";
import type { TopologyReader } from "../cluster/topology-reader";
import type { EventLog } from "../events/event-log";
import type { RedisKeys } from "../redis/keys";
import type { Logger } from "../log";
import type { TokenAccess } from "../secrets/token-access";
import type { TokenIdentity } from "../secrets/tokens";

/** Everything resolvers may use, injected when the schema is built. */
export interface ApiServices {
  readonly redis: Redis;
  readonly keys: RedisKeys;
  readonly events: EventLog;
  readonly collector: TopologyCollector;
  readonly topology: TopologyReader;
  readonly tokens: TokenAccess;
  readonly logger: Logger;
  readonly backups: BackupService;
  /** The `repositories` query's reports. */
  readonly repositories: Pick<RepositoryReporter, "list">;
  readonly nodes: readonly NodeRef[];
  readonly scheduler: BackupScheduler;
  readonly failover: FailoverService;
  /** Certificate rotation (rotateCertificates, finishCaRotation). */
  readonly certificates: CertificateRotation;
  /** The CA certificate's file on Relevo's host, named (sslrootcert) in the connection strings the API shows. */
  readonly caFile: string;
}

/** Per request (or per WebSocket connection). */
export interface ApiContext {
  readonly identity: TokenIdentity;
}
