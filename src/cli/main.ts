#!/usr/bin/env node
import "reflect-metadata";
import { Command } from "commander";
import { loadConfig, describeConfig, type RelevoConfig } from "../config/config";
import { ErrorCode, RelevoError, exitCodeFor, isRelevoError } from "../errors";
import {
  backupCreateCommand,
  backupListCommand,
  backupVerifyCommand,
  restoreClusterCommand,
  restoreCommand,
  restoreStopCommand,
} from "./backup-commands";
import {
  failbackCommand,
  failoverCommand,
  maintenanceCommand,
  rejoinCommand,
  replicaCommand,
  switchoverCommand,
} from "./failover-commands";
import { certificatesFinishCaRotationCommand, certificatesListCommand, certificatesRotateCommand } from "./certificate-commands";
import { createLogger } from "../log";
import { repoCheckCommand, repoListCommand } from "./repository-commands";
import { statusCommand, upCommand, urlCommand, type Output } from "./commands";
import { tokenCommand, tokenListCommand, tokenRevokeCommand, tokenRotateKeyCommand } from "./token-commands";

const output: Output = { out: (text) => process.stdout.write(text + "\n"), terminal: process.stdout.isTTY === true };

/** Configuration comes from the environment only (one place reads process.env). */
function config(): RelevoConfig {
  return loadConfig(process.env);
}

async function run(action: () => Promise<void> | void): Promise<void> {
  try {
    await action();
  } catch (error) {
    const code = isRelevoError(error) ? error.code : "INTERNAL";
    process.stderr.write(`relevo: error [${code}]: ${(error as Error).message}\n`);
    process.exitCode = exitCodeFor(error);
  }
}

const program = new Command();
// Options belong to the (sub)command they follow: `restore stop --to x` is stop's --to, not restore's.
program.enablePositionalOptions();
program.name("relevo").description("PostgreSQL primary/replica cluster: topology, backups, failover, behind a GraphQL API.");

program
  .command("up")
  .description("start the embedded default (nodes, Redis, API) in the foreground; Ctrl-C stops it")
  .option(
    "--new-cluster",
    "when every node lost its data but this data home had a cluster: initialise a new, empty one " +
      "(the old backups and WAL archive are moved aside) instead of refusing; to rebuild the old one, use relevo restore --cluster",
    false,
  )
  .action((options: { newCluster: boolean }) =>
    run(async () => {
      const cfg = config();
      await upCommand(cfg, { newCluster: options.newCluster }, createLogger({ level: cfg.logLevel }), output);
    }),
  );

program
  .command("status")
  .description("print the topology: every node's role, reachability, replication and lag")
  .option("--json", "machine-readable output", false)
  .action((options: { json: boolean }) => run(() => statusCommand(config(), options, output)));

const token = program
  .command("token")
  .description("print a new API token for this data home (recorded by id, never the token: see token list)")
  .enablePositionalOptions()
  .option("--role <role>", "viewer or operator", "operator")
  .option("--ttl <duration>", "lifetime: a whole number and s, m, h or d, at most 366d (default RELEVO_TOKEN_TTL, 30d)")
  .action((options: { role: string; ttl?: string }) => run(() => tokenCommand(config(), options, output)));
token
  .command("list")
  .description("tokens minted for this data home: id, role, state, created, expires (never the token)")
  .option("--json", "machine-readable output", false)
  .action((options: { json: boolean }) => run(() => tokenListCommand(config(), options, output)));
token
  .command("revoke <id>")
  .description("revoke a token by its id: running services refuse it within a second and close its WebSockets")
  .option("--force", "record the revocation of an id the registry does not know (the CLI's own tokens, or minted by hand)", false)
  .action((id: string, options: { force: boolean }) => run(() => tokenRevokeCommand(config(), { id, force: options.force }, output)));
token
  .command("rotate-key")
  .description("replace the key that signs tokens: every token minted before is refused")
  .action(() => run(() => tokenRotateKeyCommand(config(), output)));

program
  .command("url [node]")
  .description("print a libpq connection URI with credentials (default: the current primary)")
  .option("--multi-host", "every node, target_session_attrs=read-write: reaches whichever node is the primary", false)
  .option("--database <name>", "database name", "postgres")
  .action((node: string | undefined, options: { multiHost: boolean; database: string }) =>
    run(() => urlCommand(config(), { node, multiHost: options.multiHost, database: options.database }, output)),
  );

const backup = program.command("backup").description("backups (the service must be running)");
backup
  .command("create")
  .description("start a backup; prints its id")
  .option("--type <type>", "full, diff or incr", "full")
  .option("--wait", "wait until it completed; exit non-zero if it failed", false)
  .option("--repo <n>", "write it to repository n alone (default: RELEVO_BACKUP_REPO)")
  .action((options: { type: string; wait: boolean; repo?: string }) => run(() => backupCreateCommand(config(), options, output)));
backup
  .command("list")
  .description("backups in the repository, newest first")
  .option("--json", "machine-readable output", false)
  .action((options: { json: boolean }) => run(() => backupListCommand(config(), options, output)));
backup
  .command("verify <id>")
  .description("re-read the backup against its checksums; --restore-test also restores it into a scratch node and runs pg_amcheck")
  .option("--restore-test", "restore, start and check a scratch copy", false)
  .action((id: string, options: { restoreTest: boolean }) =>
    run(() => backupVerifyCommand(config(), { id, restoreTest: options.restoreTest }, output)),
  );

const restore = program
  .command("restore")
  .description(
    "restore a backup into a standalone copy (data in <dir>/data), started on --port and left running; " +
      "or, with --cluster, rebuild the whole cluster after every node was lost",
  )
  .enablePositionalOptions()
  .option("--to <dir>", "directory for the copy")
  .option("--port <n>", "port for the copy")
  .option("--backup <id>", "the backup (default: the newest completed one that ends before the target)")
  .option("--time <iso8601>", "recover to this time")
  .option("--lsn <lsn>", "recover to this LSN")
  .option("--name <restore point>", "recover to this named restore point")
  .option(
    "--cluster",
    "disaster recovery: restore the primary from the repository, then seed the replicas from it (Relevo must be stopped)",
    false,
  )
  .option("--force", "with --cluster: also while another instance's leases or operation lock are held (it is known to be dead)", false)
  .action(
    (options: {
      to?: string;
      port?: string;
      backup?: string;
      time?: string;
      lsn?: string;
      name?: string;
      cluster: boolean;
      force: boolean;
    }) =>
      run(async () => {
        if (options.cluster) {
          if (options.to || options.port)
            throw new RelevoError(
              ErrorCode.BadUserInput,
              "relevo restore --cluster restores the cluster's own nodes: --to and --port do not apply",
            );
          await restoreClusterCommand(config(), options, createLogger({ level: "warn" }), output);
          return;
        }
        if (!options.to || !options.port || !/^\d+$/.test(options.port))
          throw new RelevoError(ErrorCode.BadUserInput, "relevo restore needs --to <dir> and --port <n>");
        const cfg = config();
        await restoreCommand(cfg, { ...options, to: options.to, port: Number(options.port) }, createLogger({ level: "warn" }), output);
      }),
  );
restore
  .command("stop")
  .description("stop a restored copy")
  .requiredOption("--to <dir>", "directory of the copy")
  .action((options: { to: string }) => run(() => restoreStopCommand(config(), options, output)));

program
  .command("failover")
  .description("fence the primary and promote the most advanced eligible replica; waits until it completed (the service must be running)")
  .option("--to <name>", "the replica to promote")
  .option("--force", "also when the primary is healthy, or the replica not eligible (may lose acknowledged commits)", false)
  .action((options: { to?: string; force: boolean }) => run(() => failoverCommand(config(), options, output)));

program
  .command("switchover")
  .description("planned change of primary, losing nothing; the old primary follows the new one; waits until it completed")
  .requiredOption("--to <name>", "the replica to promote")
  .action((options: { to: string }) => run(() => switchoverCommand(config(), options, output)));

program
  .command("failback")
  .description("switchover back to RELEVO_PREFERRED_PRIMARY; waits until it completed")
  .action(() => run(() => failbackCommand(config(), output)));

program
  .command("rejoin <name>")
  .description("bring a fenced node back as a replica of the primary (pg_rewind, else a fresh seed); prints how")
  .action((name: string) => run(() => rejoinCommand(config(), { name }, output)));

program
  .command("replica <add|remove> <name>")
  .description(
    "add: seed a new streaming replica (pg_basebackup; the newest backup with RELEVO_REPLICA_SEED=repository); remove: stop one, delete its data and its slot",
  )
  .action((action: string, name: string) => run(() => replicaCommand(config(), { action, name }, output)));

program
  .command("maintenance <on|off>")
  .description("on: no automatic failover, rejoin or failback until off (manual commands still work)")
  .action((mode: string) => run(() => maintenanceCommand(config(), { mode }, output)));

const certificates = program
  .command("certificates")
  .description("the TLS certificates Relevo's CA issued: list them, rotate them without a restart, rotate the CA");
certificates
  .command("rotate")
  .description(
    "re-issue every node's certificate and reload it without a restart (through the running service), checking each serves the new one",
  )
  .option("--ca", "rotate Relevo's own CA first: the old CA stays trusted beside the new one until finish-ca-rotation", false)
  .action((options: { ca: boolean }) => run(() => certificatesRotateCommand(config(), options, output)));
certificates
  .command("finish-ca-rotation")
  .description("drop the old CA from every trust bundle once every member, Redis and the API hold certificates of the new one")
  .action(() => run(() => certificatesFinishCaRotationCommand(config(), output)));
certificates
  .command("list")
  .description("the CA (and, during a CA rotation, the old one) and each member's certificate: subject, SANs, serial, notAfter, issuer")
  .option("--json", "as JSON", false)
  .action((options: { json: boolean }) => run(() => certificatesListCommand(config(), options, output)));

const repo = program
  .command("repo")
  .description("the backup repositories the configuration names (RELEVO_REPO<n>_…): list them, check their storage from this host");
repo
  .command("list")
  .description("each repository: its number, type and place, whether it is encrypted, its retention (never a credential)")
  .option("--json", "as JSON", false)
  .action((options: { json: boolean }) => run(() => repoListCommand(config(), options, output)));
repo
  .command("check")
  .description(
    "write, read (whole and a range), list and delete a probe object in each repository's storage, and compare its clock: reports what is wrong (credentials, bucket, permissions, clock skew)",
  )
  .option("--repo <n>", "only repository n")
  .option("--json", "as JSON", false)
  .action((options: { repo?: string; json: boolean }) =>
    run(() => repoCheckCommand(config(), options, output, createLogger({ level: "warn" }))),
  );

program
  .command("config")
  .description("list every configuration key, its environment variable and default")
  .action(() =>
    run(() => {
      for (const row of describeConfig()) output.out(`${row.env.padEnd(34)} ${row.default.padEnd(28)} ${row.doc}`);
    }),
  );

program.parseAsync(process.argv).catch((error) => {
  process.stderr.write(`relevo: ${(error as Error).message}\n`);
  process.exitCode = 1;
});
