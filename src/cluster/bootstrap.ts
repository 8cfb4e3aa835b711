import { slotNameFor, STANDBY_SIGNAL } from "../postgres/replication-config";
import { isFenced, markFenced } from "../postgres/fence-marker";
import { readNodeFacts } from "../postgres/node-facts";
import { historyTimelines, newestOnEveryHistory, timelinePath, type TimelineStep } from "../postgres/timelines";
import { historyFileName } from "../postgres/wal-names";
import type { Client } from "pg";
import type { RelevoConfig } from "../config/config";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import type { Secrets } from "../secrets/secrets-store";
import { withNodeClient, type Credentials, type TrustAnchors } from "../postgres/connection";
import {
  APP_DATABASE,
  INCLUDE_LINE,
  MANAGED_CONF,
  MARKER_FILE,
  ROLE_APP,
  ROLE_REPLICATION,
  ROLE_REWIND,
  ROLE_SUPERUSER,
  hbaNetworkFor,
  managedConf,
  managedHba,
  type NodeMarker,
} from "../postgres/managed-settings";
import { assertPortFree } from "../util/ports";
import { withClaimedTarget } from "../restore/target-claim";
import type { HeldFileLock } from "../storage/file-lock";
import { sleep } from "../util/sleep";
import { conninfoString } from "../postgres/config-values";
import { libpqTlsParameters } from "../postgres/tls-settings";

export type BootstrapConfig = Pick<
  RelevoConfig,
  | "clusterName"
  | "maxSlotWalKeepSize"
  | "startTimeoutMs"
  | "nodeTimeoutMs"
  | "primaryPort"
  | "replicaPort"
  | "failoverCheckIntervalMs"
  | "failoverFailureThreshold"
>;

/**
 * A replica seeded from the repository: what feeds it the archive's WAL
 * while it catches up, closed once it streams (or its seeding failed).
 */
export interface SeededFromRepository {
  close(): Promise<void>;
}

export interface BootstrapDeps {
  readonly config: BootstrapConfig;
  readonly driver: NodeDriver;
  readonly secrets: Secrets;
  /** The CA's certificate (PEM): Relevo's connections to the nodes verify them against it. */
  readonly trustedCa: TrustAnchors;
  readonly logger: Logger;
  /**
   * Seeds a new replica from the backup repository instead of the primary
   * (materialised, not started); false when there is no backup to seed from,
   * and pg_basebackup from the primary does it then.
   */
  readonly seedFromRepository?: (node: NodeRef, upstream: NodeRef, slot: string) => Promise<SeededFromRepository | null>;
  /** Nodes the failover state records as fenced: left stopped even when their data directory lost its marker (a rewind cut short). */
  readonly fenced?: ReadonlySet<string>;
  /** The primary the failover state records: started first, so a second would-be primary finds it writable and stays fenced. */
  readonly recordedPrimary?: string | null;
  /**
   * Asked before the first node of a cluster without data is initialised
   * (initdb): throws to refuse, when the data home already had a cluster
   * whose nodes were lost (see initialisationDecision).
   */
  readonly beforeInitialise?: (node: NodeRef) => Promise<void>;
}

/** What happened to each node, for the caller's events and the CLI's output. */
export type NodeBootstrapOutcome =
  | { readonly phase: "initialized"; readonly node: NodeRef }
  | { readonly phase: "seeded"; readonly node: NodeRef; readonly upstream: string; readonly from: "primary" | "repository" }
  | { readonly phase: "started"; readonly node: NodeRef }
  | { readonly phase: "already-running"; readonly node: NodeRef }
  | { readonly phase: "fenced"; readonly node: NodeRef; readonly reason?: string };

export function superuserCredentials(
  access: { readonly secrets: Secrets; readonly trustedCa: TrustAnchors },
  database = "postgres",
): Credentials {
  return { user: ROLE_SUPERUSER, password: access.secrets.superuserPassword, database, trustedCa: access.trustedCa };
}

/**
 * Brings every node up, idempotently: a node with data is checked and started
 * as it is (its own signal files say its role); the first node of an empty
 * cluster is initialised as the primary; every other empty node is seeded from
 * the running primary with pg_basebackup over a slot of its own. A node whose
 * creation fails is removed again, so a retry starts clean.
 */
export async function bootstrapCluster(deps: BootstrapDeps, nodes: readonly NodeRef[]): Promise<NodeBootstrapOutcome[]> {
  await deps.driver.checkPrerequisites();
  const outcomes: NodeBootstrapOutcome[] = [];
  const empty: NodeRef[] = [];
  await killRunningFenced(deps, nodes);
  for (const node of await startingOrder(deps, nodes)) {
    if (await hasData(deps, node)) outcomes.push(await startExisting(deps, node, nodes));
    else empty.push(node);
  }
  for (const node of empty) {
    const primary = await findWritablePrimary(
      deps,
      outcomes.map((outcome) => outcome.node),
    );
    if (primary === null) {
      if (outcomes.length > 0) {
        throw new RelevoError(
          ErrorCode.PreconditionFailed,
          `node ${node.name} has no data and no running primary can seed it; start the primary first`,
        );
      }
      await deps.beforeInitialise?.(node);
      outcomes.push(await initializePrimary(deps, node));
    } else {
      outcomes.push(await seedReplica(deps, node, primary));
    }
  }
  return outcomes;
}

async function hasData(deps: BootstrapDeps, node: NodeRef): Promise<boolean> {
  const state = await deps.driver.state(node);
  if (state.phase === "absent") return false;
  const version = await deps.driver.readFile(node, "PG_VERSION");
  if (version !== null) return true;
  const leftovers = await deps.driver.listFiles(node, ".");
  if (leftovers.length > 0) {
    throw new RelevoError(
      ErrorCode.DataDirNotOurs,
      `data directory ${deps.driver.dataDirectory(node)} of node ${node.name} is not empty and holds no PostgreSQL cluster; ` +
        `move it away or set RELEVO_HOME to another directory`,
      { details: { env: "RELEVO_HOME" } },
    );
  }
  return false;
}

/**
 * Which node starts first: of two stopped nodes that would both start as
 * primaries (no standby.signal, no fence), the one whose timeline history
 * holds the other's (the newest promotion) comes up, and the other, finding
 * it writable, is fenced (see startExisting). The data directories decide,
 * not the recorded state, which may be stale; the recorded primary comes
 * first only when they cannot (one such node, or diverged histories).
 */
async function startingOrder(deps: BootstrapDeps, nodes: readonly NodeRef[]): Promise<NodeRef[]> {
  const recorded = nodes.find((node) => node.name === deps.recordedPrimary);
  const first = (leader: NodeRef | undefined): NodeRef[] => (leader ? [leader, ...nodes.filter((node) => node !== leader)] : [...nodes]);
  const wouldBePrimaries: NodeRef[] = [];
  for (const node of nodes) if (await wouldStartWritable(deps, node)) wouldBePrimaries.push(node);
  if (wouldBePrimaries.length < 2) return first(recorded);
  const histories = await Promise.all(wouldBePrimaries.map(async (node) => ({ key: node, path: await storedHistory(deps.driver, node) })));
  const newest = newestOnEveryHistory(histories);
  if (!newest) {
    deps.logger.warn(
      { nodes: wouldBePrimaries.map((node) => node.name), recorded: recorded?.name },
      "nodes that would start as primaries have diverged histories: the recorded primary starts first, the others stay fenced",
    );
  }
  return first(newest ?? recorded);
}

/** A stopped node with data that would start writable: no standby.signal, no fence of either kind. */
async function wouldStartWritable(deps: BootstrapDeps, node: NodeRef): Promise<boolean> {
  const { driver } = deps;
  if ((await driver.state(node)).phase !== "stopped" || deps.fenced?.has(node.name)) return false;
  if ((await driver.readFile(node, "PG_VERSION")) === null || (await driver.readFile(node, STANDBY_SIGNAL)) !== null) return false;
  return !(await isFenced(driver, node));
}

/** A stopped node's timeline history, from the newest .history file in its pg_wal (timeline 1 when there is none). */
async function storedHistory(driver: NodeDriver, node: NodeRef): Promise<TimelineStep[]> {
  const timelines = historyTimelines((await driver.listFiles(node, "pg_wal")).map((entry) => entry.path));
  const newest = Math.max(1, ...timelines);
  if (newest === 1) return timelinePath(1, null);
  return timelinePath(newest, (await driver.readFile(node, `pg_wal/${historyFileName(newest)}`))?.toString("utf8") ?? null);
}

/**
 * A fenced node found running (started by hand) is killed before anything
 * else is decided, as startExisting would kill it in its turn: it answers
 * not in recovery, and were it still running when the recorded primary's
 * turn came, the legitimate primary would be fenced in its place.
 */
async function killRunningFenced(deps: BootstrapDeps, nodes: readonly NodeRef[]): Promise<void> {
  const { driver } = deps;
  for (const node of nodes) {
    const phase = (await driver.state(node)).phase;
    if (phase !== "running" && phase !== "paused") continue;
    if (!deps.fenced?.has(node.name) && !(await isFenced(driver, node))) continue;
    await driver.kill(node);
    deps.logger.warn({ node: node.name }, "fenced node found running: killed before the others start");
  }
}

/**
 * A member other than `node` that is a primary: answers not in recovery and
 * read-write, and is not fenced (a fenced node started by hand answers
 * read-only, and is nobody's primary); null when there is none.
 */
async function writableMember(deps: BootstrapDeps, node: NodeRef, members: readonly NodeRef[]): Promise<NodeRef | null> {
  for (const member of members) {
    if (member.name === node.name || deps.fenced?.has(member.name)) continue;
    const facts = await readNodeFacts(member, superuserCredentials(deps), deps.config.nodeTimeoutMs, deps.config.clusterName);
    if (facts && !facts.inRecovery && !facts.readOnly && !(await isFenced(deps.driver, member))) return member;
  }
  return null;
}

async function startExisting(deps: BootstrapDeps, node: NodeRef, members: readonly NodeRef[]): Promise<NodeBootstrapOutcome> {
  const { driver } = deps;
  const version = (await driver.readFile(node, "PG_VERSION"))?.toString("utf8").trim();
  if (version !== "15") {
    throw new RelevoError(
      ErrorCode.DataDirIncompatible,
      `data directory ${driver.dataDirectory(node)} of node ${node.name} belongs to PostgreSQL ${version}, Relevo runs PostgreSQL 15; ` +
        `upgrade or move it away, or set RELEVO_HOME to another directory`,
      { details: { env: "RELEVO_HOME" } },
    );
  }
  const marker = parseMarker(await driver.readFile(node, MARKER_FILE));
  if (marker === null || marker.cluster !== deps.config.clusterName || marker.node !== node.name) {
    throw new RelevoError(
      ErrorCode.DataDirNotOurs,
      `data directory ${driver.dataDirectory(node)} was not created by Relevo for node ${node.name} of cluster ` +
        `${deps.config.clusterName}${marker ? ` (it belongs to ${marker.cluster}/${marker.node})` : ""}; ` +
        `set RELEVO_HOME (or RELEVO_CLUSTER_NAME) to match, or move it away`,
      { details: { env: "RELEVO_HOME" } },
    );
  }
  const state = await driver.state(node);
  // A fenced node stays down until it is rejoined as a replica (rewound
  // first): started as it is, it would be a second primary.
  if ((await isFenced(driver, node)) || deps.fenced?.has(node.name)) {
    if (state.phase === "running" || state.phase === "paused") await driver.kill(node);
    return { phase: "fenced", node };
  }
  if (state.phase === "running" || state.phase === "paused") {
    if (state.phase === "paused") await driver.resume(node);
    return { phase: "already-running", node };
  }
  // Without standby.signal it would start writable: never while another member is (two primaries, whichever the record names).
  if ((await driver.readFile(node, STANDBY_SIGNAL)) === null) {
    const writable = await writableMember(deps, node, members);
    if (writable) {
      const reason = `it would start as a primary while ${writable.name} is writable`;
      await markFenced(driver, node, reason);
      deps.logger.warn({ node: node.name, writable: writable.name }, "node left stopped and fenced: it would be a second primary");
      return { phase: "fenced", node, reason };
    }
  }
  await assertPortFree(node.host, node.port, `node ${node.name}`, portEnvFor(deps.config, node));
  await writeManagedFiles(deps, node);
  await driver.start(node, { timeoutMs: deps.config.startTimeoutMs });
  deps.logger.info({ node: node.name }, "node started");
  return { phase: "started", node };
}

async function initializePrimary(deps: BootstrapDeps, node: NodeRef): Promise<NodeBootstrapOutcome> {
  const { driver, secrets, logger } = deps;
  await assertPortFree(node.host, node.port, `node ${node.name}`, portEnvFor(deps.config, node));
  await driver.provision(node);
  try {
    logger.info({ node: node.name }, "initialising the primary (initdb with data checksums)");
    await driver.exec(
      node,
      [
        "initdb",
        "-D",
        driver.dataDirectory(node),
        // pg_rewind (failback) needs checksums or wal_log_hints; checksums also catch corruption in backups.
        "--data-checksums",
        "--auth=scram-sha-256",
        `--username=${ROLE_SUPERUSER}`,
        "--pwfile=/dev/stdin",
        "--encoding=UTF8",
        "--locale=C.UTF-8",
      ],
      { mode: "offline", stdin: `${secrets.superuserPassword}\n`, timeoutMs: deps.config.startTimeoutMs },
    );
    const postgresqlConf = (await driver.readFile(node, "postgresql.conf"))?.toString("utf8") ?? "";
    await driver.writeFile(node, "postgresql.conf", `${postgresqlConf}\n# Relevo's settings\n${INCLUDE_LINE}\n`);
    await writeMarker(deps, node);
    await writeManagedFiles(deps, node);
    await driver.start(node, { timeoutMs: deps.config.startTimeoutMs });
    await withNodeClient(node, superuserCredentials(deps), deps.config.nodeTimeoutMs, (client) => createRoles(client, secrets));
  } catch (error) {
    await driver.destroy(node).catch(() => undefined);
    throw error;
  }
  logger.info({ node: node.name }, "primary initialised");
  return { phase: "initialized", node };
}

/**
 * A replica made (or made again) from the running primary. Its name is
 * claimed while it is made (claimNodeTarget), as a restore claims its copy's:
 * a `relevo restore --to` its directory, or any other maker of that name,
 * is refused meanwhile, and neither destroys the other's files. A caller
 * that claimed it already (an addition, a reseed: from before it destroyed
 * anything) hands its claim on.
 */
export async function seedReplica(
  deps: BootstrapDeps,
  node: NodeRef,
  primary: NodeRef,
  options: { readonly claimed?: HeldFileLock } = {},
): Promise<NodeBootstrapOutcome> {
  return withClaimedTarget(deps.driver, node, { purpose: `seed replica ${node.name}`, claimed: options.claimed }, () =>
    seedClaimedReplica(deps, node, primary),
  );
}

async function seedClaimedReplica(deps: BootstrapDeps, node: NodeRef, primary: NodeRef): Promise<NodeBootstrapOutcome> {
  const { driver, logger, config } = deps;
  const slot = slotNameFor(node);
  await assertPortFree(node.host, node.port, `node ${node.name}`, portEnvFor(config, node));
  await withNodeClient(primary, superuserCredentials(deps), config.nodeTimeoutMs, (client) => ensureSlot(client, slot));
  const seeded = deps.seedFromRepository ? await deps.seedFromRepository(node, primary, slot) : null;
  const fromRepository = seeded !== null;
  if (!fromRepository) await driver.provision(node);
  try {
    try {
      if (fromRepository) logger.info({ node: node.name, upstream: primary.name, slot }, "replica seeded from the backup repository");
      else await copyFromPrimary(deps, node, primary, slot);
      await writeMarker(deps, node);
      await writeManagedFiles(deps, node);
      await driver.start(node, { timeoutMs: config.startTimeoutMs });
      await waitForStreaming(deps, node);
    } finally {
      // Streaming (or failed): the archive's WAL is fed no more; the standby's restore_command finds nothing from now on.
      await seeded
        ?.close()
        .catch((error: Error) =>
          logger.warn({ node: node.name, err: error.message }, "the archive fed to the new replica did not stop cleanly"),
        );
    }
  } catch (error) {
    await driver.destroy(node).catch(() => undefined);
    throw error;
  }
  logger.info({ node: node.name, upstream: primary.name }, "replica streaming");
  return { phase: "seeded", node, upstream: primary.name, from: fromRepository ? "repository" : "primary" };
}

/** A new replica's data by pg_basebackup from the primary, over the node's slot. */
async function copyFromPrimary(deps: BootstrapDeps, node: NodeRef, primary: NodeRef, slot: string): Promise<void> {
  const { driver, secrets, logger } = deps;
  logger.info({ node: node.name, upstream: primary.name, slot }, "seeding replica with pg_basebackup");
  await driver.exec(
    node,
    [
      "pg_basebackup",
      "-D",
      driver.dataDirectory(node),
      "-d",
      // -R writes these into the replica's primary_conninfo: its WAL receiver verifies the primary as this does.
      conninfoString({
        host: primary.host,
        port: primary.port,
        user: ROLE_REPLICATION,
        application_name: node.name,
        ...libpqTlsParameters(driver.tlsPaths(node).ca),
      }),
      // -R writes standby.signal and primary_conninfo (with application_name,
      // so the primary's pg_stat_replication and synchronous_standby_names
      // can name this node); -S streams over the node's own slot, so the
      // primary keeps the WAL the replica still needs.
      "-R",
      "-S",
      slot,
      "-X",
      "stream",
      "-c",
      "fast",
      "--no-password",
    ],
    { mode: "offline", env: { PGPASSWORD: secrets.replicationPassword }, timeoutMs: 30 * 60 * 1000 },
  );
}

export async function writeManagedFiles(deps: BootstrapDeps, node: NodeRef): Promise<void> {
  await deps.driver.writeFile(node, MANAGED_CONF, managedConf(deps.config, node, deps.driver.tlsPaths(node)));
  await deps.driver.writeFile(node, "pg_hba.conf", managedHba(hbaNetworkFor(node.host)));
}

export async function writeMarker(deps: BootstrapDeps, node: NodeRef): Promise<void> {
  const marker: NodeMarker = { cluster: deps.config.clusterName, node: node.name, createdAt: new Date().toISOString() };
  await deps.driver.writeFile(node, MARKER_FILE, JSON.stringify(marker, null, 2) + "\n");
}

function parseMarker(content: Buffer | null): NodeMarker | null {
  if (content === null) return null;
  try {
    const value = JSON.parse(content.toString("utf8")) as Partial<NodeMarker>;
    return typeof value.cluster === "string" && typeof value.node === "string" ? (value as NodeMarker) : null;
  } catch {
    return null;
  }
}

function portEnvFor(config: BootstrapConfig, node: NodeRef): string {
  return node.port === config.primaryPort ? "RELEVO_PRIMARY_PORT" : "RELEVO_REPLICA_PORT";
}

/** The running node that accepts writes (not in recovery), if any. */
export async function findWritablePrimary(
  deps: { readonly config: Pick<BootstrapConfig, "nodeTimeoutMs">; readonly secrets: Secrets; readonly trustedCa: TrustAnchors },
  nodes: readonly NodeRef[],
): Promise<NodeRef | null> {
  for (const node of nodes) {
    try {
      const inRecovery = await withNodeClient(node, superuserCredentials(deps), deps.config.nodeTimeoutMs, async (client) => {
        const result = await client.query<{ in_recovery: boolean }>("SELECT pg_is_in_recovery() AS in_recovery");
        return result.rows[0]!.in_recovery;
      });
      if (!inRecovery) return node;
    } catch {
      // unreachable: not a candidate
    }
  }
  return null;
}

/** Idempotent: roles get their current passwords, the app database exists. */
async function createRoles(client: Client, secrets: Secrets): Promise<void> {
  const roles: Array<[string, string, string]> = [
    [ROLE_REPLICATION, "LOGIN REPLICATION", secrets.replicationPassword],
    [ROLE_REWIND, "LOGIN", secrets.rewindPassword],
    [ROLE_APP, "LOGIN", secrets.appPassword],
  ];
  for (const [role, options, password] of roles) {
    const exists = await client.query("SELECT 1 FROM pg_roles WHERE rolname = $1", [role]);
    const verb = exists.rowCount === 0 ? "CREATE" : "ALTER";
    await client.query(`${verb} ROLE ${client.escapeIdentifier(role)} WITH ${options} PASSWORD ${client.escapeLiteral(password)}`);
  }
  // pg_rewind connects as a normal login and reads the source's files through these functions.
  for (const fn of [
    "pg_ls_dir(text, boolean, boolean)",
    "pg_stat_file(text, boolean)",
    "pg_read_binary_file(text)",
    "pg_read_binary_file(text, bigint, bigint, boolean)",
  ]) {
    await client.query(`GRANT EXECUTE ON FUNCTION pg_catalog.${fn} TO ${ROLE_REWIND}`);
  }
  const database = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [APP_DATABASE]);
  if (database.rowCount === 0) {
    await client.query(`CREATE DATABASE ${APP_DATABASE} OWNER ${ROLE_APP}`);
  }
}

export async function ensureSlot(client: Client, slot: string): Promise<void> {
  await client.query(
    `SELECT pg_create_physical_replication_slot($1) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`,
    [slot],
  );
}

export async function waitForStreaming(deps: Pick<BootstrapDeps, "config" | "secrets" | "trustedCa">, node: NodeRef): Promise<void> {
  const deadline = Date.now() + deps.config.startTimeoutMs;
  let last = "not connected";
  while (Date.now() < deadline) {
    try {
      last = await withNodeClient(node, superuserCredentials(deps), deps.config.nodeTimeoutMs, async (client) => {
        const result = await client.query<{ status: string }>("SELECT status FROM pg_stat_wal_receiver");
        return result.rows[0]?.status ?? "no WAL receiver";
      });
      if (last === "streaming") return;
    } catch (error) {
      last = (error as Error).message;
    }
    await sleep(200);
  }
  throw new RelevoError(ErrorCode.Timeout, `replica ${node.name} is not streaming after ${deps.config.startTimeoutMs} ms (${last})`);
}
