import { expect } from "@jest/globals";
import { execFile } from "node:child_process";
import { chown, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { restoreCommand } from "../../src/cli/backup-commands";
import { loadConfig } from "../../src/config/config";
import { ErrorCode } from "../../src/errors";
import { createLogger } from "../../src/log";
import { resolvePostgresIdentity } from "../../src/nodes/os-user";
import { commandPathWord, configString, conninfoString, conninfoValue } from "../../src/postgres/config-values";
import { editAutoConf, standbyConninfo, synchronousStandbyNames } from "../../src/postgres/replication-config";
import { recoverySettings, recoveryTargetFrom, stripUpstreamSettings } from "../../src/restore/recovery-target";
import { NODE_WAL_SCRIPT, nodeRestoreCommand, nodeWalScript } from "../../src/restore/node-wal";
import { ensureRedisServer } from "../../src/redis/redis-server";
import { hostToolEnvironment } from "../../src/util/host-tool";
import Redis from "ioredis";
import { freePort } from "../helpers/ports";
import { testRedisTls } from "../helpers/tls";
import { connectionOptions } from "../../src/redis/redis-client";

/**
 * Values Relevo writes into PostgreSQL's configuration, read back by
 * PostgreSQL's own parser: `postgres -C <setting> -D <dir>` reads the
 * directory's postgresql.conf (and postgresql.auto.conf) exactly as a server
 * start would, prints the setting and exits (≈0.1 s, no initdb, no server).
 */
const config = loadConfig({});
const identity = resolvePostgresIdentity(config.pgOsUser);
const run = promisify(execFile);

async function scratchDirectory(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "config-values-"));
  for (const [name, content] of Object.entries(files)) await writeFile(path.join(dir, name), content, { mode: 0o600 });
  if (identity) {
    await chown(dir, identity.uid, identity.gid);
    for (const name of Object.keys(files)) await chown(path.join(dir, name), identity.uid, identity.gid);
  }
  return dir;
}

/** What PostgreSQL reads for `setting` from the directory's configuration files. */
async function postgresReads(dir: string, setting: string): Promise<string> {
  const { stdout } = await run(path.join(config.pgBinDir, "postgres"), ["-C", setting, "-D", dir], {
    env: hostToolEnvironment(),
    uid: identity?.uid,
    gid: identity?.gid,
  });
  return stdout.replace(/\n$/, "");
}

/** Strings that end a naively quoted value early, or would be read as escapes, comments, further settings or shell. */
const HOSTILE = [
  "it's",
  "a\\'' restore_command = 'touch /tmp/pwned' #",
  "\\",
  "ends with a backslash\\",
  "\\n is two characters here, \\t too, \\101 and \\x41",
  "'' doubled '''' quotes",
  "# not a comment = 'x'",
  '$(touch /tmp/pwned) `id` "double" %f %p %%',
  "trailing spaces   ",
  "ünïcødé ✓",
];

describe("configuration values read back by PostgreSQL's own parser", () => {
  test("configString: every hostile string comes back exactly, and no setting is added", async () => {
    const lines = HOSTILE.map((value, index) => `relevo.v${index} = ${configString(value)}`);
    const dir = await scratchDirectory({ "postgresql.conf": `${lines.join("\n")}\n` });
    const read = await Promise.all(HOSTILE.map((_, index) => postgresReads(dir, `relevo.v${index}`)));
    expect(read).toEqual(HOSTILE);
    expect(await postgresReads(dir, "restore_command")).toBe("");
  });

  test("postgresql.auto.conf edits and a standby's settings: conninfo, synchronous names, restore_command come back as written", async () => {
    const conninfo = standbyConninfo(
      { name: "node1", host: "127.0.0.1", port: 15432 },
      { name: "node2", host: "127.0.0.1", port: 15433 },
      "pa'ss\\word",
      "/home/it's a\\home/nodes/node2/tls/ca.crt",
    );
    const names = synchronousStandbyNames(["node2", 'we"ird']);
    const autoConf = editAutoConf("", {
      primary_conninfo: conninfo,
      synchronous_standby_names: names,
      restore_command: nodeRestoreCommand("standby"),
    });
    const dir = await scratchDirectory({ "postgresql.conf": "", "postgresql.auto.conf": autoConf });
    expect(await postgresReads(dir, "primary_conninfo")).toBe(conninfo);
    expect(await postgresReads(dir, "synchronous_standby_names")).toBe(names);
    expect(await postgresReads(dir, "restore_command")).toBe(nodeRestoreCommand("standby"));
    expect(conninfo).toBe(
      "host='127.0.0.1' port=15432 user='replicator' password='pa\\'ss\\\\word' application_name='node2' connect_timeout=2 " +
        "sslmode='verify-full' sslrootcert='/home/it\\'s a\\\\home/nodes/node2/tls/ca.crt' channel_binding='require'",
    );
    expect(names).toBe('ANY 2 ("node2", "we""ird")');
  });

  test("the restored copy's settings: an accepted restore point name comes back exactly from postgres -C recovery_target_name", async () => {
    const name = "before it's migrated: #1 = 'v2' %f";
    const dir = await scratchDirectory({ "postgresql.conf": recoverySettings({ target: recoveryTargetFrom({ name }) }) });
    expect(await postgresReads(dir, "recovery_target_name")).toBe(name);
    expect(await postgresReads(dir, "restore_command")).toBe(nodeRestoreCommand("recovery"));
    expect(await postgresReads(dir, "archive_mode")).toBe("off");
  });

  test("a restored copy's postgresql.auto.conf loses every upstream setting PostgreSQL would read: any case, without `=`", async () => {
    // One form per setting (the last line of a name wins); each is read by PostgreSQL before the strip, none after.
    const planted: Record<string, [line: string, value: string]> = {
      primary_conninfo: ["PRIMARY_CONNINFO 'host=stranger password=y'", "host=stranger password=y"],
      primary_slot_name: ["  Primary_Slot_Name\t'relevo_node2'", "relevo_node2"],
      restore_command: ["restore_command'cp /x %p'", "cp /x %p"],
      archive_command: ["Archive_Command = '/bin/true'", "/bin/true"],
      synchronous_standby_names: ["synchronous_standby_names='*'", "*"],
    };
    const kept = ["# primary_conninfo = 'a comment'", "cluster_name = 'kept'"];
    const autoConf = [...Object.values(planted).map(([line]) => line), ...kept, ""].join("\n");
    const settings = Object.keys(planted);
    const before = await scratchDirectory({ "postgresql.conf": "", "postgresql.auto.conf": autoConf });
    expect(await Promise.all(settings.map((setting) => postgresReads(before, setting)))).toEqual(
      Object.values(planted).map(([, value]) => value),
    );
    const stripped = stripUpstreamSettings(autoConf);
    expect(stripped).toBe([...kept, ""].join("\n"));
    const after = await scratchDirectory({ "postgresql.conf": "", "postgresql.auto.conf": stripped });
    expect(await Promise.all(settings.map((setting) => postgresReads(after, setting)))).toEqual(settings.map(() => ""));
    expect(await postgresReads(after, "cluster_name")).toBe("kept");
  });

  test("an include in postgresql.auto.conf cannot carry upstream settings past the strip", async () => {
    // Review 14 L6: the parser honours include directives there too.
    const planted = "restore_command = 'cp /x %p'\nprimary_conninfo = 'host=elsewhere'\n";
    for (const directive of ["include 'planted.conf'", "INCLUDE_IF_EXISTS = 'planted.conf'", "include_dir 'planted.d'"]) {
      const files = { "postgresql.conf": "", "postgresql.auto.conf": `cluster_name = 'kept'\n${directive}\n`, "planted.conf": planted };
      const before = await scratchDirectory(files);
      if (directive.startsWith("include_dir")) {
        await mkdir(path.join(before, "planted.d"));
        await writeFile(path.join(before, "planted.d", "a.conf"), planted);
        if (identity) await chown(path.join(before, "planted.d"), identity.uid, identity.gid);
      }
      expect([directive, await postgresReads(before, "restore_command")]).toEqual([directive, "cp /x %p"]);
      const stripped = stripUpstreamSettings(files["postgresql.auto.conf"]);
      expect(stripped).toBe("cluster_name = 'kept'\n");
      const after = await scratchDirectory({ ...files, "postgresql.auto.conf": stripped });
      expect(await postgresReads(after, "restore_command")).toBe("");
      expect(await postgresReads(after, "cluster_name")).toBe("kept");
    }
  });

  test("restore_command copies from the node's own relevo_wal/, run in the data directory, whatever odd path that directory has", async () => {
    const root = await mkdtemp(path.join(os.tmpdir(), "config-values-"));
    // The data directory's path never enters the command: PostgreSQL runs restore_command there.
    const pgdata = path.join(root, `it's "a" $(x) 100%f dir`);
    await mkdir(path.join(pgdata, "relevo_wal"), { recursive: true });
    await writeFile(path.join(pgdata, NODE_WAL_SCRIPT), nodeWalScript());
    await writeFile(path.join(pgdata, "relevo_wal", "000000010000000000000001"), "segment");
    // PostgreSQL's substitution (RestoreArchivedFile → BuildRestoreCommand): %f, %p, and %% for a percent sign.
    const command = nodeRestoreCommand("recovery").replace(/%([fp%])/g, (_, letter: string) =>
      letter === "f" ? "000000010000000000000001" : letter === "p" ? "pg_wal/RECOVERYXLOG" : "%",
    );
    await mkdir(path.join(pgdata, "pg_wal"));
    await run("sh", ["-c", command], { cwd: pgdata });
    expect(await readFile(path.join(pgdata, "pg_wal", "RECOVERYXLOG"), "utf8")).toBe("segment");
    await rm(root, { recursive: true, force: true });
  });

  test("a value with a newline, a carriage return, NUL or another control character is refused, never written", () => {
    for (const value of ["a\nrestore_command = 'x'", "a\rb", "a\u0000b", "a\tb", "a\u007fb"]) {
      for (const quote of [configString, conninfoValue, commandPathWord]) {
        expect(() => quote(value)).toThrow(expect.objectContaining({ code: ErrorCode.BadUserInput }));
      }
      expect(() => conninfoString({ password: value })).toThrow(expect.objectContaining({ code: ErrorCode.BadUserInput }));
      expect(() => editAutoConf("", { primary_conninfo: value })).toThrow(expect.objectContaining({ code: ErrorCode.BadUserInput }));
    }
  });
});

describe("restore point names an operator gives", () => {
  const hostile = ["a\\'\nrestore_command = 'touch /tmp/pwned'", "line\nbreak", "back\\slash", "nul\u0000", "tab\there", "x".repeat(64)];

  test("a newline, a backslash, any control character or more than 63 bytes: BAD_USER_INPUT, from the API's and the CLI's parser and the writer alike", () => {
    for (const name of hostile) {
      expect(() => recoveryTargetFrom({ name })).toThrow(expect.objectContaining({ code: ErrorCode.BadUserInput }));
      expect(() => recoverySettings({ target: { kind: "name", name } })).toThrow(expect.objectContaining({ code: ErrorCode.BadUserInput }));
    }
    expect(recoveryTargetFrom({ name: "x".repeat(63) })).toEqual({ kind: "name", name: "x".repeat(63) });
  });

  test("relevo restore --name with a newline is refused before anything is claimed or written", async () => {
    const home = await mkdtemp(path.join(os.tmpdir(), "config-values-home-"));
    const to = path.join(home, "copy");
    const printed: string[] = [];
    const output = { out: (line: string) => void printed.push(line), terminal: false };
    await expect(
      restoreCommand(loadConfig({ RELEVO_HOME: home }), { to, port: 1, name: hostile[0] }, createLogger({ level: "silent" }), output),
    ).rejects.toMatchObject({ code: ErrorCode.BadUserInput });
    await expect(stat(to)).rejects.toMatchObject({ code: "ENOENT" });
    await expect(stat(`${to}.restore.lock`)).rejects.toMatchObject({ code: "ENOENT" });
    expect(printed).toEqual([]);
  });
});

describe("redis.conf, read back by Redis", () => {
  test("a data home with spaces, quotes and a backslash, and a password with a quote: Relevo's Redis starts with them exactly", async () => {
    const home = path.join(await mkdtemp(path.join(os.tmpdir(), "config-values-")), `it's a "home" \\ dir`);
    const password = 'pa"ss\\word';
    const options = { home, host: "127.0.0.1", port: await freePort(), password, bin: config.redisServerBin, startTimeoutMs: 10000 };
    const tls = await testRedisTls();
    const server = await ensureRedisServer({ ...options, logger: createLogger({ level: "silent" }), tls });
    const client = new Redis({ ...connectionOptions({ ...options, tls: tls.client }), lazyConnect: true, maxRetriesPerRequest: 0 });
    try {
      await client.connect();
      expect(await client.config("GET", "dir")).toEqual(["dir", path.join(home, "redis")]);
      expect(await client.config("GET", "requirepass")).toEqual(["requirepass", password]);
    } finally {
      client.disconnect();
      await server.stop();
    }
  });
});
