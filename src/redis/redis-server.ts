import { spawnHostTool } from "../util/host-tool";
import { access, mkdir, readFile, writeFile, chmod } from "node:fs/promises";
import { constants } from "node:fs";
import path from "node:path";
import Redis from "ioredis";
import { ErrorCode, isRelevoError, RelevoError } from "../errors";
import type { Logger } from "../log";
import { assertPortFree } from "../util/ports";
import { sleep } from "../util/sleep";
import { hasControlCharacter } from "../util/control-characters";
import type { RelevoConfig } from "../config/config";
import { connectorFor, parseRedisUrl, type RedisEndpoint } from "./redis-client";

export interface RedisServerOptions {
  readonly home: string;
  readonly host: string;
  readonly port: number;
  readonly password: string;
  readonly bin: string;
  readonly startTimeoutMs: number;
  readonly logger: Logger;
}

export interface RedisServerHandle {
  /** True when this call started the server (false: an earlier run's server was reused). */
  readonly started: boolean;
  /** SHUTDOWN (persisting the append-only file) and wait for the process to exit. */
  stop(): Promise<void>;
}

/**
 * Relevo's own Redis: append-only persistence on, data under the data home,
 * bound to the configured address, password from the secrets file (in a 0600
 * config file, never on the command line where `ps` would show it). It runs in
 * a session of its own so a Ctrl-C on Relevo's terminal does not reach it;
 * Relevo stops it last, after everything that writes to it. A server
 * already on its port is adopted only when the kernel shows it is run by
 * Relevo's own user (redis-peer.ts), before AUTH is sent: a stranger's is
 * refused with REDIS_NOT_OURS and gets nothing.
 */
export async function ensureRedisServer(options: RedisServerOptions): Promise<RedisServerHandle> {
  const dir = path.join(options.home, "redis");
  await mkdir(dir, { recursive: true, mode: 0o700 });
  if (await answersPing(options)) {
    options.logger.info({ port: options.port }, "reusing the running Redis server");
    return { started: false, stop: () => shutdown(options) };
  }
  const bin = await resolveBinary(options.bin);
  await assertPortFree(options.host, options.port, "Redis", "RELEVO_REDIS_PORT");
  const configFile = path.join(dir, "redis.conf");
  await writeFile(configFile, redisConf(options, dir), { mode: 0o600 });
  await chmod(configFile, 0o600);
  const child = spawnHostTool(bin, [configFile], { detached: true });
  child.unref();
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const deadline = Date.now() + options.startTimeoutMs;
  while (Date.now() < deadline) {
    const earlyExit = await Promise.race([exited, sleep(100).then(() => undefined)]);
    if (earlyExit !== undefined) {
      throw new RelevoError(ErrorCode.CommandFailed, `redis-server exited with code ${earlyExit} while starting: ${await logTail(dir)}`);
    }
    const answers = await answersPing(options).catch((error: unknown) => {
      child.kill("SIGKILL"); // a stranger took the port first: ours could not bind it
      throw error;
    });
    if (answers) {
      options.logger.info({ port: options.port, pid: child.pid }, "Redis started");
      return { started: true, stop: () => shutdown(options) };
    }
  }
  child.kill("SIGKILL");
  throw new RelevoError(ErrorCode.Timeout, `Redis did not answer within ${options.startTimeoutMs} ms: ${await logTail(dir)}`);
}

/**
 * The cluster's Redis: the one RELEVO_REDIS_URL names (waited for, never
 * started or stopped), else Relevo's own (started unless it runs already;
 * `handle.started` says whether this call started it).
 */
export async function clusterRedisServer(
  config: Pick<RelevoConfig, "redisUrl" | "home" | "host" | "redisPort" | "redisServerBin" | "startTimeoutMs">,
  password: string,
  logger: Logger,
): Promise<{ endpoint: RedisEndpoint; handle: RedisServerHandle }> {
  if (config.redisUrl) {
    const endpoint = parseRedisUrl(config.redisUrl);
    return { endpoint, handle: await requireExternalRedis(endpoint, config.startTimeoutMs, logger) };
  }
  const endpoint = { host: config.host, port: config.redisPort, password };
  const handle = await ensureRedisServer({
    home: config.home,
    host: config.host,
    port: config.redisPort,
    password,
    bin: config.redisServerBin,
    startTimeoutMs: config.startTimeoutMs,
    logger,
  });
  return { endpoint, handle };
}

/**
 * A Redis server run by someone else (RELEVO_REDIS_URL): waited for until it
 * answers (a compose stack starts it beside Relevo), never started or stopped.
 */
export async function requireExternalRedis(
  endpoint: { host: string; port: number; password: string },
  timeoutMs: number,
  logger: Logger,
): Promise<RedisServerHandle> {
  const deadline = Date.now() + timeoutMs;
  let why = "no answer";
  while (Date.now() < deadline) {
    const client = new Redis({
      host: endpoint.host,
      port: endpoint.port,
      password: endpoint.password,
      lazyConnect: true,
      connectTimeout: 1000,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    client.on("error", () => undefined);
    try {
      await client.connect();
      await client.ping();
      logger.info({ host: endpoint.host, port: endpoint.port }, "using the Redis server of RELEVO_REDIS_URL");
      return { started: false, stop: () => Promise.resolve() };
    } catch (error) {
      why = (error as Error).message;
    } finally {
      client.disconnect();
    }
    await sleep(250);
  }
  throw new RelevoError(
    ErrorCode.ServiceUnavailable,
    `the Redis server of RELEVO_REDIS_URL (${endpoint.host}:${endpoint.port}) did not answer within ${timeoutMs} ms (${why}): start it, or unset RELEVO_REDIS_URL to let Relevo run its own`,
    { details: { env: "RELEVO_REDIS_URL" } },
  );
}

/**
 * One argument of a redis.conf line, double-quoted as Redis's config parser
 * (sdssplitargs) reads it back: `\` and `"` escaped, no control character
 * (a newline would start a directive of its own). The data home's path is
 * the operator's to choose, spaces included.
 */
export function redisConfigWord(value: string): string {
  if (hasControlCharacter(value)) {
    throw new RelevoError(ErrorCode.InvalidConfig, `${JSON.stringify(value)} cannot go into redis.conf: it holds a control character`);
  }
  return `"${value.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

export function redisConf(options: RedisServerOptions, dir: string): string {
  return [
    "# Written by Relevo at every start.",
    `bind ${redisConfigWord(options.host)}`,
    `port ${options.port}`,
    "protected-mode yes",
    `requirepass ${redisConfigWord(options.password)}`,
    `dir ${redisConfigWord(dir)}`,
    "daemonize no",
    `pidfile ${redisConfigWord(path.join(dir, "redis.pid"))}`,
    `logfile ${redisConfigWord(path.join(dir, "redis.log"))}`,
    // Events and in-flight metadata wait here while the primary is down: keep them across restarts.
    "appendonly yes",
    "appendfsync everysec",
    "save 60 1000",
    "",
  ].join("\n");
}

/**
 * A one-shot connection to Relevo's own Redis: no retries, no queue, closed
 * by the caller; proven to be run by Relevo's own user before AUTH is sent
 * (OwnRedisConnector). `refusal` is the proof's typed error, when it failed.
 */
function oneShotClient(options: RedisServerOptions): { client: Redis; refusal: () => RelevoError | null } {
  const client = new Redis({
    host: options.host,
    port: options.port,
    password: options.password,
    ...connectorFor({ external: false }),
    lazyConnect: true,
    disconnectTimeout: 100,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 1000,
  });
  let refusal: RelevoError | null = null;
  // ioredis reports the connector's refusal as an error before the connect fails with its own.
  client.on("error", (error) => {
    if (isRelevoError(error) && error.code === ErrorCode.RedisNotOurs) refusal = error;
  });
  return { client, refusal: () => refusal };
}

/**
 * Whether Relevo's own Redis answers on its port: false when nothing does;
 * REDIS_NOT_OURS when something run by another user holds the port (it
 * got no password, and is not taken for a Redis that is down either: a
 * start would fail on its port).
 */
async function answersPing(options: RedisServerOptions): Promise<boolean> {
  const { client, refusal } = oneShotClient(options);
  try {
    await client.connect();
    return (await client.ping()) === "PONG";
  } catch (error) {
    const refused = refusal();
    if (refused) throw refused;
    if (isRelevoError(error)) throw error;
    return false;
  } finally {
    client.disconnect();
  }
}

async function shutdown(options: RedisServerOptions): Promise<void> {
  const { client } = oneShotClient(options); // a stranger now on the port is refused: nothing to shut down
  try {
    await client.connect();
    await client.call("SHUTDOWN").catch(() => undefined); // the connection closes as the server exits
  } catch {
    return; // not running
  } finally {
    client.disconnect();
  }
  const pidText = await readFile(path.join(options.home, "redis", "redis.pid"), "utf8").catch(() => "");
  const pid = Number(pidText.trim());
  for (let waited = 0; waited < 10000 && pid > 0 && isAlive(pid); waited += 50) await sleep(50);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function resolveBinary(bin: string): Promise<string> {
  const candidates = bin.includes("/")
    ? [bin]
    : (process.env.PATH ?? "")
        .split(":")
        .concat(["/usr/bin", "/usr/sbin"])
        .map((dir) => path.join(dir, bin));
  for (const candidate of candidates) {
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // next
    }
  }
  throw new RelevoError(
    ErrorCode.MissingBinary,
    `${bin} not found: install Debian's redis-server (apt-get install -y redis-server) or set RELEVO_REDIS_SERVER_BIN`,
    { details: { env: "RELEVO_REDIS_SERVER_BIN" } },
  );
}

async function logTail(dir: string): Promise<string> {
  const text = await readFile(path.join(dir, "redis.log"), "utf8").catch(() => "");
  return text.trim().split("\n").slice(-3).join(" | ") || "no log";
}
