#!/usr/bin/env node
import "reflect-metadata";
import { Command } from "commander";
import { loadConfig, describeConfig, type RelevoConfig } from "../config/config";
import { exitCodeFor, isRelevoError } from "../errors";
import { createLogger } from "../log";
import { statusCommand, tokenCommand, upCommand, urlCommand, type Output } from "./commands";

const output: Output = { out: (text) => process.stdout.write(text + "\n") };

/** Configuration comes from the environment only (one place reads process.env). */
function config(): RelevoConfig {
  return loadConfig(process.env);
}

async function run(action: () => Promise<void>): Promise<void> {
  try {
    await action();
  } catch (error) {
    const code = isRelevoError(error) ? error.code : "INTERNAL";
    process.stderr.write(`relevo: error [${code}]: ${(error as Error).message}\n`);
    process.exitCode = exitCodeFor(error);
  }
}

const program = new Command();
program.name("relevo").description("PostgreSQL primary/replica cluster: topology, backups, failover, behind a GraphQL API.");

program
  .command("up")
  .description("start the embedded default (nodes, Redis, API) in the foreground; Ctrl-C stops it")
  .action(() =>
    run(async () => {
      const cfg = config();
      await upCommand(cfg, createLogger({ level: cfg.logLevel }), output);
    }),
  );

program
  .command("status")
  .description("print the topology: every node's role, reachability, replication and lag")
  .option("--json", "machine-readable output", false)
  .action((options: { json: boolean }) => run(() => statusCommand(config(), options, output)));

program
  .command("token")
  .description("print a new API token for this data home")
  .option("--role <role>", "viewer or operator", "operator")
  .action((options: { role: string }) => run(() => tokenCommand(config(), options, output)));

program
  .command("url [node]")
  .description("print a libpq connection URI with credentials (default: the current primary)")
  .option("--multi-host", "every node, target_session_attrs=read-write: reaches whichever node is the primary", false)
  .option("--database <name>", "database name", "postgres")
  .action((node: string | undefined, options: { multiHost: boolean; database: string }) =>
    run(() => urlCommand(config(), { node, multiHost: options.multiHost, database: options.database }, output)),
  );

program
  .command("config")
  .description("list every configuration key, its environment variable and default")
  .action(() =>
    run(async () => {
      for (const row of describeConfig()) output.out(`${row.env.padEnd(34)} ${row.default.padEnd(28)} ${row.doc}`);
    }),
  );

program.parseAsync(process.argv).catch((error) => {
  process.stderr.write(`relevo: ${(error as Error).message}\n`);
  process.exitCode = 1;
});
