import { spawnHostTool } from "../util/host-tool";
import { access, mkdir, open, readFile, writeFile, chmod } from "node:fs/promises";
import { constants } from "node:fs";
import path from "node:path";
import Redis from "ioredis";
import { ErrorCode, isRelevoError, RelevoError } from "../errors";
import type { Logger } from "../log";
import { assertPortFree } from "../util/ports";
import { sleep } from "../util/sleep";
import { hasControlCharacter } from "../util/control-characters";
import type { RelevoConfig } from "../config/config";
import { isLoopback } from "../config/api-transport";
import { readConfiguredFile } from "../config/configured-file";
import { connectionOptions, parseRedisUrl, type RedisEndpoint } from "./redis-client";
import { recordIssued } from "../tls/issued-certificates";
import { REDIS_SERVER_HOLDER } from "./redis-certificate";
import { ensureRedisServerCertificate, ownRedisTls, redisTlsFiles, type OwnRedisTls, type RedisCertificateIssuer } from "./redis-tls";

export interface RedisServerOptions {
  readonly home: string;
  readonly host: string;
  readonly port: number;
  readonly password: string;
  readonly bin: string;
  readonly startTimeoutMs: number;
  readonly logger: Logger;
  /** TLS only: the server's certificate from Relevo's CA, and what Relevo's clients present (redis-tls.ts). */
  readonly tls: OwnRedisTls;
}

export interface RedisServerHandle {
  /** True when this call started the server (false: an earlier run's server was reused). */
  readonly started: boolean;
  /** SHUTDOWN (persisting the append-only file) and wait for the process to exit. */
  stop(): Promise<void>;
}

/** Where Relevo's own Redis keeps its configuration, data, log and TLS files: `<home>/redis`. Pure. */
export function redisDirectory(home: string): string {
  return path.join(home, "redis");
}

/**
 * Relevo's own Redis: append-only persistence on, data under the data home,
 * bound to the configured address, password from the secrets file (in a 0600
 * config file, never on the command line where `ps` would show it), TLS only
 * with a client certificate asked of every client (redis-tls.ts). It runs in
 * a session of its own so a Ctrl-C on Relevo's terminal does not reach it;
 * Relevo stops it last, after everything that writes to it. A server
 * already on its port is adopted only when the kernel shows it is run by
 * Relevo's own user (redis-peer.ts), before AUTH is sent: a stranger's is
 * refused with REDIS_NOT_OURS and gets nothing.
 */
export async function ensureRedisServer(options: RedisServerOptions): Promise<RedisServerHandle> {
  const dir = redisDirectory(options.home);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  if (await answersPing(options)) {
    options.logger.info({ port: options.port }, "reusing the running Redis server");
    return { started: false, stop: () => shutdown(options) };
  }
  const bin = await resolveBinary(options.bin);
  await assertPortFree(options.host, options.port, "Redis", "RELEVO_REDIS_PORT");
  const { issued } = await ensureRedisServerCertificate({ redisDirectory: dir, issuer: options.tls.issuer, addresses: [options.host] });
  if (issued) options.logger.info({ reason: issued }, "Redis's server certificate issued");
  // What Redis serves from this start, in the record of issued certificates (certificates list, the expiry check).
  await recordIssued(options.home, REDIS_SERVER_HOLDER, await readFile(redisTlsFiles(dir).certificateFile, "utf8"));
  const configFile = path.join(dir, "redis.conf");
  await writeFile(configFile, redisConf(options, dir), { mode: 0o600 });
  await chmod(configFile, 0o600);
  // A configuration error (a redis-server built without TLS) is written to stderr before the log file is opened.
  const stderrFile = path.join(dir, "redis.stderr");
  const stderr = await open(stderrFile, "w", 0o600);
  const child = spawnHostTool(bin, [configFile], { detached: true, stdio: ["ignore", "ignore", stderr.fd] });
  // Listened for before anything is awaited: a redis-server that stops at once (a configuration it refuses) may
  // exit while the close below yields, and an "exit" emitted with no listener is gone (the start then timed out).
  // A spawn that fails (the binary cannot be run) ends it the same way.
  const exited = new Promise<number | null>((resolve) => {
    child.once("exit", (code) => resolve(code));
    child.once("error", () => resolve(null));
  });
  await stderr.close();
  child.unref();
  const deadline = Date.now() + options.startTimeoutMs;
  while (Date.now() < deadline) {
    const earlyExit = await Promise.race([exited, sleep(100).then(() => undefined)]);
    if (earlyExit !== undefined) {
      const complaint = await readFile(stderrFile, "utf8").catch(() => "");
      if (withoutTls(complaint)) throw redisWithoutTls(bin, complaint);
      throw new RelevoError(
        ErrorCode.CommandFailed,
        `redis-server exited with code ${earlyExit} while starting: ${complaint.trim().split("\n").slice(-3).join(" | ") || (await logTail(dir))}`,
      );
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
 * `handle.started` says whether this call started it; `own`, its TLS).
 */
export async function clusterRedisServer(
  config: ExternalRedisSettings & Pick<RelevoConfig, "home" | "host" | "redisPort" | "redisServerBin" | "startTimeoutMs">,
  credentials: { readonly password: string; readonly issuer: RedisCertificateIssuer },
  logger: Logger,
): Promise<{ endpoint: RedisEndpoint; handle: RedisServerHandle; own: OwnRedisTls | null }> {
  if (config.redisUrl) {
    const endpoint = await externalRedisEndpoint(config);
    // Accepted by RELEVO_REDIS_TLS=off only (loadConfig refuses it otherwise): said at every start.
    if (!endpoint.tls && !isLoopback(endpoint.host)) {
      logger.warn(
        { host: endpoint.host, port: endpoint.port },
        "RELEVO_REDIS_URL is plain TCP to an address other machines can reach (RELEVO_REDIS_TLS=off): Redis's password and Relevo's state travel in clear",
      );
    }
    return { endpoint, handle: await requireExternalRedis(endpoint, config.startTimeoutMs, logger), own: null };
  }
  const tls = await ownRedisTls(credentials.issuer);
  const endpoint = { host: config.host, port: config.redisPort, password: credentials.password, tls: tls.client };
  const handle = await ensureRedisServer({
    home: config.home,
    host: config.host,
    port: config.redisPort,
    password: credentials.password,
    bin: config.redisServerBin,
    startTimeoutMs: config.startTimeoutMs,
    logger,
    tls,
  });
  return { endpoint, handle, own: tls };
}

type ExternalRedisSettings = Pick<RelevoConfig, "redisUrl" | "redisCaFile" | "redisCertFile" | "redisKeyFile">;

/**
 * RELEVO_REDIS_URL's endpoint: a rediss:// one trusts RELEVO_REDIS_CA_FILE
 * (else Node's root CAs) and presents RELEVO_REDIS_CERT_FILE and
 * RELEVO_REDIS_KEY_FILE when given (src/config checked that they go
 * together, and with rediss:// only). A file that cannot be read is
 * INVALID_CONFIG naming its variable.
 */
export async function externalRedisEndpoint(config: ExternalRedisSettings): Promise<RedisEndpoint> {
  const endpoint = parseRedisUrl(config.redisUrl);
  if (!endpoint.tls) return endpoint;
  const optional = (file: string, env: string): Promise<string | undefined> =>
    file === "" ? Promise.resolve(undefined) : readConfiguredFile(file, env, { secret: env === "RELEVO_REDIS_KEY_FILE" });
  const [ca, cert, key] = await Promise.all([
    optional(config.redisCaFile, "RELEVO_REDIS_CA_FILE"),
    optional(config.redisCertFile, "RELEVO_REDIS_CERT_FILE"),
    optional(config.redisKeyFile, "RELEVO_REDIS_KEY_FILE"),
  ]);
  return { ...endpoint, tls: { ca, cert, key } };
}

/**
 * A Redis server run by someone else (RELEVO_REDIS_URL): waited for until it
 * answers (a compose stack starts it beside Relevo), never started or stopped.
 */
export async function requireExternalRedis(endpoint: RedisEndpoint, timeoutMs: number, logger: Logger): Promise<RedisServerHandle> {
  const deadline = Date.now() + timeoutMs;
  let why = "no answer";
  while (Date.now() < deadline) {
    const client = new Redis({
      ...connectionOptions(endpoint),
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

export function redisConf(options: Pick<RedisServerOptions, "host" | "port" | "password">, dir: string): string {
  const tls = redisTlsFiles(dir);
  return [
    "# Written by Relevo at every start.",
    `bind ${redisConfigWord(options.host)}`,
    // TLS only: no plain port; every client presents a certificate of Relevo's CA and verifies the server's.
    "port 0",
    `tls-port ${options.port}`,
    `tls-cert-file ${redisConfigWord(tls.certificateFile)}`,
    `tls-key-file ${redisConfigWord(tls.keyFile)}`,
    `tls-ca-cert-file ${redisConfigWord(tls.caFile)}`,
    "tls-auth-clients yes",
    `tls-protocols "TLSv1.2 TLSv1.3"`,
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
function oneShotClient(options: RedisServerOptions): {
  client: Redis;
  refusal: () => RelevoError | null;
  /** The connection's errors' messages, in order (a TLS failure's among them). */
  errors: () => readonly string[];
} {
  const connection = connectionOptions({ host: options.host, port: options.port, password: options.password, tls: options.tls.client });
  const client = new Redis({
    ...connection,
    // TLS 1.2: Redis refuses a client certificate of another CA inside the handshake, which then fails with that
    // reason; under TLS 1.3 the refusal comes after it, often as a bare reset that names nothing.
    tls: { ...connection.tls, maxVersion: "TLSv1.2" },
    lazyConnect: true,
    disconnectTimeout: 100,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 1000,
  });
  let refusal: RelevoError | null = null;
  const errors: string[] = [];
  // ioredis reports the connector's refusal as an error before the connect fails with its own.
  client.on("error", (error: Error) => {
    errors.push(error.message);
    if (isRelevoError(error) && error.code === ErrorCode.RedisNotOurs) refusal = error;
  });
  return { client, refusal: () => refusal, errors: () => errors };
}

/**
 * What a TLS client says when the handshake failed over certificates (the
 * server's not verified, or ours refused), shortened to OpenSSL's reason
 * ("tlsv1 alert unknown ca" → "unknown ca"). Pure.
 */
export function tlsCertificateFailure(messages: readonly string[]): string | null {
  const found = messages.find((message) => /unknown ca|certificate|verify|bad certificate|altname/i.test(message));
  if (found === undefined) return null;
  const line = found.split("\n")[0]!.trim();
  return /SSL routines:[^:]*:(?:tlsv1 alert )?([^:]+)/.exec(line)?.[1] ?? line;
}

/**
 * Whether Relevo's own Redis answers on its port: false when nothing does;
 * REDIS_NOT_OURS when something run by another user holds the port (it
 * got no password, and is not taken for a Redis that is down either: a
 * start would fail on its port).
 */
async function answersPing(options: RedisServerOptions): Promise<boolean> {
  const { client, refusal, errors } = oneShotClient(options);
  try {
    await client.connect();
    return (await client.ping()) === "PONG";
  } catch (error) {
    const refused = refusal();
    if (refused) throw refused;
    if (isRelevoError(error)) throw error;
    // Proven Relevo's own user's (the proof passed), yet the certificates do not match: a Redis started with
    // another CA's, not a free port (the start would then fail on it with PORT_IN_USE, which misleads).
    const tlsFailure = tlsCertificateFailure([...errors(), (error as Error).message]);
    if (tlsFailure !== null) throw redisOfAnotherCa(options, tlsFailure);
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

/**
 * Whether redis-server's complaint at start says it knows no TLS directive:
 * a build without TLS (BUILD_TLS=no) reads `tls-port` as a bad directive. Pure.
 */
export function withoutTls(stderr: string): boolean {
  return /Bad directive/i.test(stderr) && /\btls-/.test(stderr);
}

function redisWithoutTls(bin: string, stderr: string): RelevoError {
  const version = /Redis \d+\.\d+\.\d+/.exec(stderr)?.[0] ?? "this redis-server";
  return new RelevoError(
    ErrorCode.MissingBinary,
    `${bin} (${version}) was built without TLS, and Relevo's Redis serves TLS only: install a redis-server 6 or later built with TLS ` +
      "(Debian's redis-server is), set RELEVO_REDIS_SERVER_BIN to one, or use a Redis of your own with RELEVO_REDIS_URL",
    { details: { env: "RELEVO_REDIS_SERVER_BIN" } },
  );
}

async function logTail(dir: string): Promise<string> {
  const text = await readFile(path.join(dir, "redis.log"), "utf8").catch(() => "");
  return text.trim().split("\n").slice(-3).join(" | ") || "no log";
}

function redisOfAnotherCa(options: RedisServerOptions, reason: string): RelevoError {
  return new RelevoError(
    ErrorCode.PreconditionFailed,
    `a Redis run by Relevo's own user answers on port ${options.port}, but its TLS handshake with this process failed (${reason}): ` +
      `it runs with certificates of another CA (the CA was rotated or RELEVO_TLS_CA_FILE replaced while it ran, or it is another ` +
      `data home's, or left running by a Relevo before its CAs changed). Stop it once (its pid is in ` +
      `${path.join(redisDirectory(options.home), "redis.pid")}) and start again: it then gets certificates of the current CA ` +
      `(while a service of this version runs, \`relevo certificates rotate\` renews it in place)`,
    { details: { env: "RELEVO_REDIS_PORT", port: options.port } },
  );
}
