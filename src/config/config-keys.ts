import { z } from "zod";
import { parseDuration } from "./duration";

/**
 * Every configuration key: its environment variable, default and meaning.
 * This table is the single source for `loadConfig`, for `relevo config`, and
 * for docs/configuration.md (a test checks that page lists every variable
 * with its default).
 */
const port = z.coerce.number().int().min(1).max(65535);
const positiveInt = z.coerce.number().int().positive();
const booleanFlag = z
  .enum(["true", "false", "1", "0", "on", "off", "yes", "no"])
  .transform((value) => ["true", "1", "on", "yes"].includes(value));
/** A period as operators write it (`30d`); parsed into milliseconds. */
export const durationSchema = z.string().transform((text, ctx) => {
  const ms = parseDuration(text);
  if (ms === null) ctx.addIssue({ code: "custom", message: "a duration: a whole number and s, m, h or d (e.g. 30d)" });
  return ms ?? 0;
});
const cronOrOff = z.string().regex(/^(off|(\S+\s+){4}\S+)$/, "a 5-field cron expression (UTC) or off");

export const configKeys = {
  home: {
    env: "RELEVO_HOME",
    default: "./.relevo",
    schema: z.string().min(1),
    doc: "Data home: node data directories, Redis data, secrets, logs.",
  },
  clusterName: {
    env: "RELEVO_CLUSTER_NAME",
    default: "relevo",
    schema: z.string().regex(/^[a-z][a-z0-9-]{0,39}$/, "lower-case letters, digits and '-', starting with a letter"),
    doc: "Name of the cluster, shown in the API and used in labels.",
  },
  driver: {
    env: "RELEVO_DRIVER",
    default: "local",
    schema: z.enum(["local", "docker"]),
    doc: "Node driver: `local` runs PostgreSQL as processes on this machine; `docker` runs each node as a container of a Docker engine.",
  },
  dockerImage: {
    env: "RELEVO_DOCKER_IMAGE",
    default: "postgres:15",
    schema: z.string().min(1),
    doc: "Image of the node containers (docker driver): the official postgres:15 or one with its layout. Relevo never pulls: the engine must have it.",
  },
  dockerHost: {
    env: "RELEVO_DOCKER_HOST",
    default: "",
    schema: z.string(),
    doc: "Docker engine (docker driver): unix:///path/to/docker.sock or tcp://host:port (plain TCP on loopback only, else with RELEVO_DOCKER_CERT_PATH); empty means DOCKER_HOST, else the local socket /var/run/docker.sock.",
  },
  dockerCertPath: {
    env: "RELEVO_DOCKER_CERT_PATH",
    default: "",
    schema: z.string(),
    doc: "Directory with ca.pem, cert.pem and key.pem for a TLS engine (docker driver); empty means DOCKER_CERT_PATH when DOCKER_TLS_VERIFY is set, else no TLS.",
  },
  host: {
    env: "RELEVO_HOST",
    default: "127.0.0.1",
    // It is written into every node's listen_addresses, pg_hba.conf and connection strings: an address, nothing more.
    schema: z.string().regex(/^[A-Za-z0-9.:-]+$/, "an IP address or a host name"),
    doc: "Address every server Relevo starts listens on (nodes, Redis, API): an IP address or a host name.",
  },
  apiPort: {
    env: "RELEVO_API_PORT",
    default: "4000",
    schema: port,
    doc: "Port of the GraphQL API, GraphiQL and health endpoints.",
  },
  apiTls: {
    env: "RELEVO_API_TLS",
    default: "auto",
    schema: z.enum(["auto", "on", "off"]),
    doc: "HTTPS for the API (and its WebSocket). `auto`: HTTPS when RELEVO_API_TLS_CERT_FILE is set, else plain HTTP on a loopback RELEVO_HOST and a refused start on any other. `on`: HTTPS, with the files when set, else a certificate Relevo's services CA issues for RELEVO_HOST at each start. `off`: plain HTTP, also on a non-loopback address (warned at start: tokens travel in clear).",
  },
  apiTlsCertFile: {
    env: "RELEVO_API_TLS_CERT_FILE",
    default: "",
    schema: z.string(),
    doc: "PEM certificate (and its chain) the API serves HTTPS with; with RELEVO_API_TLS_KEY_FILE. Its names must include the address clients use (the CLI uses RELEVO_HOST).",
  },
  apiTlsKeyFile: {
    env: "RELEVO_API_TLS_KEY_FILE",
    default: "",
    schema: z.string(),
    doc: "The unencrypted PEM private key of RELEVO_API_TLS_CERT_FILE; set both or neither. Never logged.",
  },
  primaryPort: {
    env: "RELEVO_PRIMARY_PORT",
    default: "15432",
    schema: port,
    doc: "Port of the first node (the initial primary).",
  },
  replicaPort: {
    env: "RELEVO_REPLICA_PORT",
    default: "15433",
    schema: port,
    doc: "Port of the first replica; further replicas take the following ports.",
  },
  replicaCount: {
    env: "RELEVO_REPLICA_COUNT",
    default: "1",
    schema: z.coerce.number().int().min(0).max(8),
    doc: "Number of streaming replicas (0 to 8).",
  },
  redisPort: {
    env: "RELEVO_REDIS_PORT",
    default: "16379",
    schema: port,
    doc: "Port of Relevo's own Redis server.",
  },
  pgBinDir: {
    env: "RELEVO_PG_BIN_DIR",
    default: "/usr/lib/postgresql/15/bin",
    schema: z.string().min(1),
    doc: "Directory of the PostgreSQL 15 binaries (initdb, pg_ctl, pg_basebackup...).",
  },
  pgOsUser: {
    env: "RELEVO_PG_OS_USER",
    default: "postgres",
    schema: z.string().min(1),
    doc: "OS user that runs PostgreSQL when Relevo runs as root (PostgreSQL refuses root).",
  },
  redisServerBin: {
    env: "RELEVO_REDIS_SERVER_BIN",
    default: "redis-server",
    schema: z.string().min(1),
    doc: "The redis-server binary (a name looked up in PATH, or a path).",
  },
  redisUrl: {
    env: "RELEVO_REDIS_URL",
    default: "",
    schema: z.string().regex(/^$|^rediss?:\/\/(:[^@]*@)?[^:/@]+(:\d+)?\/?$/, "redis[s]://[:password@]host[:port]"),
    // It carries Redis's password: an invalid value is not quoted back.
    secret: true,
    doc: "A Redis server run by someone else (e.g. the compose stack's), as redis://:password@host:port (plain TCP; a loopback address only, unless RELEVO_REDIS_TLS=off) or rediss://… (TLS, see RELEVO_REDIS_CA_FILE); Relevo then neither starts nor stops one. Empty: Relevo runs its own, TLS only, on RELEVO_REDIS_PORT. Never logged.",
  },
  redisTls: {
    env: "RELEVO_REDIS_TLS",
    default: "auto",
    schema: z.enum(["auto", "off"]),
    doc: "Whether a redis:// RELEVO_REDIS_URL (plain TCP) may name an address other machines can reach. `auto`: only a loopback address; any other is a refused start (Redis's password and Relevo's state would travel in clear). `off`: accepted, warned at start. Relevo's own Redis and rediss:// are TLS either way.",
  },
  redisCaFile: {
    env: "RELEVO_REDIS_CA_FILE",
    default: "",
    schema: z.string(),
    doc: "With a rediss:// RELEVO_REDIS_URL: PEM file of the CA(s) that issued that server's certificate (its address is checked against the certificate too). Empty: Node's bundled root CAs.",
  },
  redisCertFile: {
    env: "RELEVO_REDIS_CERT_FILE",
    default: "",
    schema: z.string(),
    doc: "With a rediss:// RELEVO_REDIS_URL: PEM client certificate Relevo presents to that server (one with tls-auth-clients); with RELEVO_REDIS_KEY_FILE.",
  },
  redisKeyFile: {
    env: "RELEVO_REDIS_KEY_FILE",
    default: "",
    schema: z.string(),
    doc: "The unencrypted PEM private key of RELEVO_REDIS_CERT_FILE; set both or neither. Never logged.",
  },
  tlsCaFile: {
    env: "RELEVO_TLS_CA_FILE",
    default: "",
    schema: z.string(),
    doc: "PEM certificate of a CA of your own (a self-signed root, or an intermediate followed by its chain) that issues every node's certificate; with RELEVO_TLS_CA_KEY_FILE. Empty: Relevo makes its own CA once, in `<RELEVO_HOME>/tls/`. Clients are given this file as their trust bundle (`sslrootcert`). The nodes' CA only: the API's and Redis's certificates come from Relevo's own services CA (`<RELEVO_HOME>/tls/services-ca.crt`) either way.",
  },
  tlsCaKeyFile: {
    env: "RELEVO_TLS_CA_KEY_FILE",
    default: "",
    schema: z.string(),
    doc: "The unencrypted PEM private key (EC P-256 or P-384, or RSA) of RELEVO_TLS_CA_FILE's CA; set both or neither. Never logged, never copied.",
  },
  maxSlotWalKeepSize: {
    env: "RELEVO_MAX_SLOT_WAL_KEEP_SIZE",
    default: "4GB",
    schema: z.string().regex(/^\d+(kB|MB|GB|TB)$/, "a PostgreSQL size such as 512MB or 4GB"),
    doc: "max_slot_wal_keep_size: WAL a replication slot may hold back, so a dead replica cannot fill the disk.",
  },
  topologyPollIntervalMs: {
    env: "RELEVO_TOPOLOGY_POLL_INTERVAL_MS",
    default: "1000",
    schema: z.coerce.number().int().min(100).max(60000),
    doc: "How often the topology collector polls every node (ms).",
  },
  lagAlertBytes: {
    env: "RELEVO_LAG_ALERT_BYTES",
    default: "16777216",
    schema: positiveInt,
    doc: "Replication lag (bytes) above which a replica counts as lagging (a topology change and an event).",
  },
  nodeTimeoutMs: {
    env: "RELEVO_NODE_TIMEOUT_MS",
    default: "2000",
    schema: z.coerce.number().int().min(100).max(60000),
    doc: "Connect and query timeout for Relevo's checks of a node (ms).",
  },
  startTimeoutMs: {
    env: "RELEVO_START_TIMEOUT_MS",
    default: "120000",
    schema: z.coerce.number().int().min(1000),
    doc: "How long to wait for a node or Redis to start (ms).",
  },
  apiMaxDepth: {
    env: "RELEVO_API_MAX_DEPTH",
    default: "10",
    schema: z.coerce.number().int().min(2).max(100),
    doc: "Deepest selection a GraphQL operation may have.",
  },
  apiMaxComplexity: {
    env: "RELEVO_API_MAX_COMPLEXITY",
    default: "5000",
    schema: positiveInt,
    doc: "Largest estimated cost of a GraphQL operation: one per field, lists multiplied by their page size, plus a fixed cost for a field that reads the backup catalog or scans the event stream (see docs/api.md#limits).",
  },
  apiRateLimitPerSecond: {
    env: "RELEVO_API_RATE_LIMIT_PER_SECOND",
    default: "50",
    schema: z.coerce.number().min(0).max(100000),
    doc: "Rate-limit units a token (or, without a valid token, a client address) may spend per second, sustained, over HTTP and WebSocket together: a GraphQL operation takes one per 50 of its estimated cost, at least one (see docs/api.md#limits); 0 turns the limit off.",
  },
  apiRateLimitBurst: {
    env: "RELEVO_API_RATE_LIMIT_BURST",
    default: "500",
    schema: z.coerce.number().int().min(1).max(1000000),
    doc: "Rate-limit units a token may spend at once above the sustained rate before it is answered RATE_LIMITED (the token bucket's size).",
  },
  apiRefusalWindowMs: {
    env: "RELEVO_API_REFUSAL_WINDOW_MS",
    default: "60000",
    schema: z.coerce.number().int().min(100).max(3600000),
    doc: "Refused API requests (a viewer's mutation, a query over the limits, a request without an accepted token) are counted per token, or per address without one: one `api:refused` event at the first, one with the count at the end of this window.",
  },
  apiMaxWebSockets: {
    env: "RELEVO_API_MAX_WEBSOCKETS",
    default: "1000",
    schema: z.coerce.number().int().min(1).max(100000),
    doc: "WebSockets the API keeps open at once, with or without a token; one more is answered HTTP 503 (TOO_MANY_CONNECTIONS) before its handshake. At most a quarter of them may be without an accepted `connection_init` (HTTP 503), 16 of one address (HTTP 429).",
  },
  apiMaxWebSocketsPerToken: {
    env: "RELEVO_API_MAX_WEBSOCKETS_PER_TOKEN",
    default: "32",
    schema: z.coerce.number().int().min(1).max(100000),
    doc: "WebSockets one token may hold open; one more is closed with 1013 (Try Again Later) and TOO_MANY_CONNECTIONS. Each socket runs at most 100 operations at once.",
  },
  eventsMaxLength: {
    env: "RELEVO_EVENTS_MAX_LENGTH",
    default: "100000",
    schema: z.coerce.number().int().min(1000),
    doc: "Events kept in the Redis stream once consolidated (older ones remain in PostgreSQL's `events` table); events not consolidated yet are kept up to 5 times this.",
  },
  eventsRetention: {
    env: "RELEVO_EVENTS_RETENTION",
    default: "30d",
    schema: durationSchema,
    doc: "How long PostgreSQL's `events` table keeps an event (s, m, h or d); older rows are deleted by the scheduled job `prune-events`, hourly.",
  },
  tokenTtl: {
    env: "RELEVO_TOKEN_TTL",
    default: "30d",
    schema: durationSchema,
    doc: "Lifetime of an API token minted by `relevo token` (without --ttl) or for `relevo up`'s banner (s, m, h or d; at most 366d).",
  },
  repository: {
    env: "RELEVO_REPOSITORY",
    default: "",
    schema: z.string(),
    doc: "Backup repository directory (WAL archive and backups); empty means `<RELEVO_HOME>/repository`. Production: put it on another disk or host.",
  },
  backupCompression: {
    env: "RELEVO_BACKUP_COMPRESSION",
    default: "lz4",
    schema: z.enum(["lz4", "gzip", "none"]),
    doc: "How backup content is stored: lz4 (fast), gzip (level 1: smaller, slower) or none.",
  },
  backupSource: {
    env: "RELEVO_BACKUP_SOURCE",
    default: "primary",
    schema: z.enum(["primary", "replica", "prefer-replica"]),
    doc: "Where backups are copied from: primary, replica (a streaming replica, else the backup fails), or prefer-replica (the primary when no replica is streaming within RELEVO_LAG_ALERT_BYTES).",
  },
  backupRepo: {
    env: "RELEVO_BACKUP_REPO",
    default: "all",
    schema: z.union([z.literal("all"), z.coerce.number().int().min(1).max(256)]),
    doc: "Which repository a backup is written to: all (taken into the lowest-numbered, then copied to each other) or a repository's number n (RELEVO_REPO<n>_…).",
  },
  replicaSeed: {
    env: "RELEVO_REPLICA_SEED",
    default: "primary",
    schema: z.enum(["primary", "repository"]),
    doc: "Where a new replica's data comes from: primary (pg_basebackup) or repository (the newest backup plus the archive, sparing the primary; the primary when there is no backup yet).",
  },
  backupParallelism: {
    env: "RELEVO_BACKUP_PARALLELISM",
    default: "4",
    schema: z.coerce.number().int().min(1).max(32),
    doc: "Files copied (and restored) at the same time: more than the cores, because small files spend most of their time waiting on the file system.",
  },
  retentionFull: {
    env: "RELEVO_RETENTION_FULL",
    default: "2",
    schema: z.coerce.number().int().min(1).max(1000),
    doc: "Full backups kept (with everything that depends on them); older ones and the WAL only they needed are expired after each backup.",
  },
  scheduleFullBackup: {
    env: "RELEVO_SCHEDULE_FULL_BACKUP",
    default: "0 3 * * 0",
    schema: cronOrOff,
    doc: "When the scheduled full backup runs (cron, UTC; default Sundays 03:00), or off.",
  },
  scheduleDifferentialBackup: {
    env: "RELEVO_SCHEDULE_DIFFERENTIAL_BACKUP",
    default: "0 3 * * 1-6",
    schema: cronOrOff,
    doc: "When the scheduled differential backup runs (cron, UTC; default 03:00 every day but Sunday, when the full runs), or off.",
  },
  scheduleIncrementalBackup: {
    env: "RELEVO_SCHEDULE_INCREMENTAL_BACKUP",
    default: "15 * * * *",
    schema: cronOrOff,
    doc: "When the scheduled incremental backup runs (cron, UTC; default every hour at :15, clear of the 03:00 and 04:30 jobs), or off.",
  },
  scheduleVerify: {
    env: "RELEVO_SCHEDULE_VERIFY",
    default: "30 4 * * *",
    schema: cronOrOff,
    doc: "When the newest backup is verified with a restore test (cron, UTC; default daily 04:30), or off.",
  },
  schedulerPollMs: {
    env: "RELEVO_SCHEDULER_POLL_MS",
    default: "5000",
    schema: z.coerce.number().int().min(100).max(600000),
    doc: "How often the scheduler looks for due jobs (ms).",
  },
  schedulerLockLifetimeMs: {
    env: "RELEVO_SCHEDULER_LOCK_LIFETIME_MS",
    default: "60000",
    schema: z.coerce.number().int().min(1000).max(3600000),
    doc: "How long a scheduled run's lock lasts without renewal (ms); a running job renews it every third of that, so another instance takes over only a dead one's run.",
  },
  walSummaryIntervalMs: {
    env: "RELEVO_WAL_SUMMARY_INTERVAL_MS",
    default: "1000",
    schema: z.coerce.number().int().min(100).max(3600000),
    doc: "How often newly archived WAL segments are summarised (blocks changed per relation, for differential and incremental backups) (ms).",
  },
  leaseTtlMs: {
    env: "RELEVO_LEASE_TTL_MS",
    default: "10000",
    schema: z.coerce.number().int().min(1000).max(600000),
    doc: "Time to live of the Redis leases that keep the WAL archiver, backups, the failover monitor and each failover operation's journal to one service instance at a time, and of the backups' repository locks (verification, restore, expiry; the CLI's `relevo restore` too) (ms); renewed every third of it, so another instance takes over a dead one's work, and a dead holder's backup lock is free, after at most this long.",
  },
  scheduleRetries: {
    env: "RELEVO_SCHEDULE_RETRIES",
    default: "3",
    schema: z.coerce.number().int().min(0).max(20),
    doc: "How many times a failed scheduled run is retried (exponential backoff) before it waits for its next scheduled time.",
  },
  scheduleRetryDelayMs: {
    env: "RELEVO_SCHEDULE_RETRY_DELAY_MS",
    default: "60000",
    schema: z.coerce.number().int().min(100).max(86400000),
    doc: "Delay before the first retry of a failed scheduled run (ms); each further retry waits twice as long.",
  },
  archiveCheckIntervalMs: {
    env: "RELEVO_ARCHIVE_CHECK_INTERVAL_MS",
    default: "60000",
    schema: z.coerce.number().int().min(100),
    doc: "How often the WAL archive is checked for gaps and lag (ms).",
  },
  archiveMaxLagBytes: {
    env: "RELEVO_ARCHIVE_MAX_LAG_BYTES",
    default: "67108864",
    schema: z.coerce.number().int().min(0),
    doc: "How far (bytes) the archive may trail the primary, beyond the segment being written, before an archive:lagging event.",
  },
  walSpoolMax: {
    env: "RELEVO_WAL_SPOOL_MAX",
    default: "4294967296",
    // Four segments at least: the newest complete segment and pg_receivewal's .partial (16 MiB, preallocated) are never
    // dropped, so a full spool must be able to fall below 80 % with those two in it (2 × 16 MiB < 0.8 × 64 MiB): with
    // less, receiving would never resume (review 23).
    schema: z.coerce.number().int().min(67108864),
    doc: "Largest size (bytes) of the WAL spool ($RELEVO_HOME/wal-spool): past it the archiver stops receiving (archive:spool-full) until the repository takes what it holds and the spool is below 80 % again. At least 64 MiB (four segments).",
  },
  archiveTimeoutMs: {
    env: "RELEVO_ARCHIVE_TIMEOUT_MS",
    default: "120000",
    schema: z.coerce.number().int().min(1000),
    doc: "How long a backup waits for its WAL to reach the archive before it fails (ms).",
  },
  synchronous: {
    env: "RELEVO_SYNCHRONOUS",
    default: "true",
    schema: booleanFlag,
    doc: "Durability mode. `true`: every commit waits until all in-sync replicas have it, so an automatic failover loses no acknowledged commit (a replica that stops answering is dropped from the set within the detection window and is not promoted until it has caught up). `false`: asynchronous; automatic promotion only within RELEVO_FAILOVER_MAXIMUM_LAG_BYTES, and the loss is reported.",
  },
  failoverCheckIntervalMs: {
    env: "RELEVO_FAILOVER_CHECK_INTERVAL_MS",
    default: "1000",
    schema: z.coerce.number().int().min(100).max(60000),
    doc: "How often the failover monitor checks the primary (ms); each check has this long to answer.",
  },
  failoverFailureThreshold: {
    env: "RELEVO_FAILOVER_FAILURE_THRESHOLD",
    default: "3",
    schema: z.coerce.number().int().min(1).max(100),
    doc: "Consecutive failed checks before the primary counts as failed; with the interval this is the detection window (replicas must have lost the primary too).",
  },
  failoverMaximumLagBytes: {
    env: "RELEVO_FAILOVER_MAXIMUM_LAG_BYTES",
    default: "1048576",
    schema: z.coerce.number().int().min(0),
    doc: "Asynchronous mode: a replica is promoted automatically only if its last known lag was under this many bytes (a forced failover ignores it).",
  },
  commitWaitCheckpointIntervalMs: {
    env: "RELEVO_COMMIT_WAIT_CHECKPOINT_INTERVAL_MS",
    default: "30000",
    schema: z.coerce.number().int().min(0).max(3600000),
    doc: "Synchronous mode: the least time between two CHECKPOINTs the failover monitor requests on one primary to confirm that its commits wait for a standby that joined (ms). A standby flapping in and out of the set would otherwise cause an immediate checkpoint each time; until the next is allowed, a checkpoint the server ran after the setting changed confirms it, and the standby becomes eligible only once confirmed.",
  },
  switchoverCatchUpTimeoutMs: {
    env: "RELEVO_SWITCHOVER_CATCH_UP_TIMEOUT_MS",
    default: "30000",
    schema: z.coerce.number().int().min(100).max(3600000),
    doc: "How long a switchover or failback waits for the target to receive the stopped primary's last record (ms); past it the switchover is called off and the old primary restarted unchanged.",
  },
  preferredPrimary: {
    env: "RELEVO_PREFERRED_PRIMARY",
    default: "node1",
    schema: z.string().regex(/^node[1-9]$/, "a node name: node1 … node9"),
    doc: "The node `failback` returns the primary role to.",
  },
  autoFailback: {
    env: "RELEVO_AUTO_FAILBACK",
    default: "false",
    schema: booleanFlag,
    doc: "Fail back automatically once the preferred primary has been a streaming, caught-up replica for RELEVO_AUTO_FAILBACK_AFTER_MS.",
  },
  autoFailbackAfterMs: {
    env: "RELEVO_AUTO_FAILBACK_AFTER_MS",
    default: "60000",
    schema: z.coerce.number().int().min(0),
    doc: "How long the preferred primary must have been healthy and in sync before an automatic failback (ms).",
  },
  autoRejoin: {
    env: "RELEVO_AUTO_REJOIN",
    default: "true",
    schema: booleanFlag,
    doc: "Rejoin a fenced node as a replica of the new primary (pg_rewind, else re-seed) as soon as its storage is reachable; `false` leaves it fenced until `rejoinNode`.",
  },
  logLevel: {
    env: "RELEVO_LOG_LEVEL",
    default: "info",
    schema: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]),
    doc: "Log level (pino): fatal, error, warn, info, debug, trace or silent.",
  },
} as const;

export type ConfigKey = keyof typeof configKeys;
