import { readFile } from "node:fs/promises";
import net from "node:net";
import type { ErrorEmitter } from "ioredis/built/connectors/AbstractConnector";
import StandaloneConnector, { type StandaloneConnectionOptions } from "ioredis/built/connectors/StandaloneConnector";
import type { NetStream } from "ioredis/built/types";
import { ErrorCode, RelevoError } from "../errors";
import { sleep } from "../util/sleep";

/*
 * Relevo's own Redis is proven to be run by Relevo's own OS user before any
 * byte is sent to it, AUTH (the password) first among them. Anything that
 * answers +PONG would do for a ping; the port of a Redis that is down is
 * free for any local user to take, and ioredis sends AUTH the moment it
 * connects, on every reconnection too.
 *
 * The proof is the kernel's word, not the server's: once a TCP connection
 * is made, /proc/net/tcp (tcp6) lists the server's end of it with the uid
 * of the socket's owner (an accepted socket inherits the listener's). If
 * that uid is Relevo's own (root, usually; the embedded Redis runs as
 * Relevo's user), the listener is a process Relevo's user runs, which could
 * read secrets.json anyway; any other user's server, however it answers,
 * is refused and the socket closed unwritten. A stranger cannot fake the
 * uid without being that user, and the check is made on the very
 * connection that is then used, so there is no window between proof and
 * AUTH. What it does not prove: which of Relevo's user's processes it is
 * (another home's Redis would get a wrong password and refuse it). A
 * server in another network namespace (a container) has no entry here and
 * cannot be proven: RELEVO_REDIS_URL's server is not checked this way
 * (docs/security.md).
 */

/** One row of /proc/net/tcp or tcp6: a socket's two ends and its owner. Addresses are dotted IPv4 or full IPv6. */
export interface TcpSocketRow {
  readonly local: { readonly address: string; readonly port: number };
  readonly remote: { readonly address: string; readonly port: number };
  readonly uid: number;
}

/** The rows of /proc/net/tcp or /proc/net/tcp6 (the kernel's hex, bytes of each 32-bit word in host order). Pure. */
export function parseTcpTable(text: string): TcpSocketRow[] {
  const rows: TcpSocketRow[] = [];
  for (const line of text.split("\n").slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 8) continue;
    const local = parseEndpoint(fields[1]!);
    const remote = parseEndpoint(fields[2]!);
    const uid = Number(fields[7]);
    if (local && remote && Number.isInteger(uid)) rows.push({ local, remote, uid });
  }
  return rows;
}

function parseEndpoint(text: string): { address: string; port: number } | null {
  const [hex, portHex] = text.split(":");
  if (!hex || !portHex || (hex.length !== 8 && hex.length !== 32)) return null;
  const words = hex.match(/.{8}/g)!.map((word) => Buffer.from(word, "hex").reverse()); // little-endian words on x86/arm
  const bytes = Buffer.concat(words);
  return { address: addressOf(bytes), port: parseInt(portHex, 16) };
}

/** Dotted IPv4 for 4 bytes and for an IPv4-mapped IPv6 address (what Node reports for a dual-stack peer), else full IPv6. */
function addressOf(bytes: Buffer): string {
  const mapped = bytes.length === 16 && bytes.subarray(0, 10).every((byte) => byte === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
  if (bytes.length === 4 || mapped) return Array.from(bytes.subarray(bytes.length - 4)).join(".");
  return Array.from({ length: 8 }, (_unused, i) => bytes.readUInt16BE(i * 2).toString(16)).join(":");
}

/** A textual address as parseTcpTable writes it (full IPv6, dotted IPv4 for mapped ones). Pure. */
export function canonicalAddress(address: string): string {
  if (net.isIPv4(address)) return address;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  const halves = address.split("::");
  const head = halves[0] ? halves[0].split(":") : [];
  const tail = halves.length > 1 && halves[1] ? halves[1].split(":") : [];
  const groups = [...head, ...Array<string>(8 - head.length - tail.length).fill("0"), ...tail];
  return groups.map((group) => parseInt(group, 16).toString(16)).join(":");
}

/**
 * The uid owning the server's end of the connection whose client end is
 * `client` and server end `server`; null when the table has no such row
 * (not yet there, or the server is in another network namespace). Pure.
 */
export function serverEndOwner(
  rows: readonly TcpSocketRow[],
  connection: { readonly client: { address: string; port: number }; readonly server: { address: string; port: number } },
): number | null {
  const same = (a: { address: string; port: number }, b: { address: string; port: number }) =>
    a.port === b.port && canonicalAddress(a.address) === canonicalAddress(b.address);
  const row = rows.find((candidate) => same(candidate.local, connection.server) && same(candidate.remote, connection.client));
  return row ? row.uid : null;
}

/** How long the server's end may take to appear after the client's connect (loopback: the ACK is processed at once). */
const SERVER_END_WAIT_MS = 200;

/**
 * Proves the server at the other end of `socket` (connected, nothing
 * written yet) runs as `trustedUid` (Relevo's own by default); else
 * throws REDIS_NOT_OURS. The caller closes the socket on a refusal.
 */
export async function proveRedisPeer(socket: net.Socket, trustedUid: number = process.geteuid?.() ?? 0): Promise<void> {
  const client = { address: socket.localAddress ?? "", port: socket.localPort ?? 0 };
  const server = { address: socket.remoteAddress ?? "", port: socket.remotePort ?? 0 };
  const deadline = Date.now() + SERVER_END_WAIT_MS;
  for (;;) {
    const rows = parseTcpTable(
      (await Promise.all(["/proc/net/tcp", "/proc/net/tcp6"].map((file) => readFile(file, "utf8").catch(() => "")))).join("\n"),
    );
    const owner = serverEndOwner(rows, { client, server });
    if (owner === trustedUid) return;
    if (owner !== null) {
      throw redisNotOurs(server, `it is run by uid ${owner}, not by Relevo's own user (uid ${trustedUid})`);
    }
    if (Date.now() >= deadline) {
      throw redisNotOurs(server, "the kernel lists no server end of the connection on this host (another network namespace?)");
    }
    await sleep(5);
  }
}

function redisNotOurs(server: { address: string; port: number }, why: string): RelevoError {
  return new RelevoError(
    ErrorCode.RedisNotOurs,
    `what answers on Redis's port ${server.address}:${server.port} is not Relevo's own Redis: ${why}. No password was sent. ` +
      `Stop that program, or set RELEVO_REDIS_PORT to a port of Relevo's own`,
    { details: { env: "RELEVO_REDIS_PORT", port: server.port } },
  );
}

/**
 * ioredis's connector for Relevo's own Redis: each connection (the first and
 * every reconnection) is handed to ioredis, which then sends AUTH, only
 * once proveRedisPeer accepts it. A refused one is handed over destroyed,
 * with the refusal as its first error: ioredis reports it and retries as
 * for any failed connection, so clients resume once Relevo's Redis is back.
 */
export class OwnRedisConnector extends StandaloneConnector {
  /** The last refusal, for callers that want the typed error (a one-shot connect fails with ioredis's own). */
  refusal: RelevoError | null = null;

  /** ioredis passes its whole options object (`unknown` in its ConnectorConstructor type). */
  constructor(options: unknown) {
    super(options as StandaloneConnectionOptions);
  }

  override async connect(emitError: ErrorEmitter): Promise<NetStream> {
    const stream = await super.connect(emitError);
    // ioredis arms its connect timeout only on a stream still connecting: this wait keeps one of its own.
    const timeoutMs = (this.options as { connectTimeout?: number }).connectTimeout ?? 10000;
    if (!(stream instanceof net.Socket) || !(await connected(stream, timeoutMs))) return stream;
    try {
      await proveRedisPeer(stream);
      this.refusal = null;
    } catch (error) {
      this.refusal = error as RelevoError;
      this.firstError = error as Error;
      stream.destroy();
    }
    return stream;
  }
}

/** Waits for the socket's connect; false when it failed or timed out (ioredis reports the failure itself). */
function connected(socket: net.Socket, timeoutMs: number): Promise<boolean> {
  if (!socket.connecting) return Promise.resolve(!socket.destroyed);
  return new Promise((resolve) => {
    const timer = setTimeout(() => socket.destroy(Object.assign(new Error("connect ETIMEDOUT"), { code: "ETIMEDOUT" })), timeoutMs);
    const done = (ok: boolean) => () => {
      clearTimeout(timer);
      socket.off("connect", onConnect);
      socket.off("close", onClose);
      resolve(ok);
    };
    const onConnect = done(true);
    const onClose = done(false);
    socket.once("connect", onConnect);
    socket.once("close", onClose);
  });
}
