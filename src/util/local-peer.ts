import { readFile } from "node:fs/promises";
import net from "node:net";
import { sleep } from "./sleep";

/*
 * Who serves the other end of a TCP connection, in the kernel's words.
 * Relevo sends a secret (Redis's AUTH, the CLI's operator token) only to a
 * server it has proven to be run by a user who could read that secret
 * anyway: the port of a server that is down is free for any local user to
 * take, and neither Redis's protocol nor a bearer token has a challenge
 * that would tell the real server from a stranger.
 *
 * The proof is the kernel's word, not the server's: once a TCP connection
 * is made, /proc/net/tcp (tcp6) lists the server's end of it, and the
 * listening socket it came through, each with the uid of its owner. The
 * listener answers for the connection: before Linux 6.17 a connection the
 * server has not accept()ed yet is listed as root's (it has no socket file
 * yet), so a stranger that accepts a moment late would pass a check of the
 * connection's row alone (review 14); a listener always has its owner's.
 * A stranger cannot fake the uid without being that user, and the check is
 * made on the very connection that is then used, so there is no window
 * between proof and secret. What it does not prove: which of that user's
 * processes it is. A server in another network namespace (a container, or
 * another host) has no entry here and cannot be proven: each caller says
 * what it does then (docs/security.md, "Who gets a password").
 */

/** One row of /proc/net/tcp or tcp6: a socket's two ends and its owner. Addresses are dotted IPv4 or full IPv6. */
export interface TcpSocketRow {
  readonly local: { readonly address: string; readonly port: number };
  readonly remote: { readonly address: string; readonly port: number };
  /** The kernel's TCP state (0x0A: listening). */
  readonly state: number;
  readonly uid: number;
}

const TCP_LISTEN = 0x0a;
/** A listener bound to every address, IPv4 and IPv6, as parseTcpTable writes them. */
const WILDCARD_ADDRESSES = new Set(["0.0.0.0", "0:0:0:0:0:0:0:0"]);

/** The rows of /proc/net/tcp or /proc/net/tcp6 (the kernel's hex, bytes of each 32-bit word in host order). Pure. */
export function parseTcpTable(text: string): TcpSocketRow[] {
  const rows: TcpSocketRow[] = [];
  for (const line of text.split("\n").slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 8) continue;
    const local = parseEndpoint(fields[1]!);
    const remote = parseEndpoint(fields[2]!);
    const uid = Number(fields[7]);
    const state = parseInt(fields[3]!, 16);
    if (local && remote && Number.isInteger(uid) && Number.isInteger(state)) rows.push({ local, remote, state, uid });
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
 * The uid answering for the server's end of the connection whose client
 * end is `client` and server end `server`; null when the table has no such
 * connection (not yet there, or the server is in another network
 * namespace). The listener the connection came through answers (its own
 * address's, else a wildcard one's on that port): the connection's row may
 * say root before the server accepted it (kernels before 6.17). A
 * connection row of another owner than root and the listener's (the socket
 * handed to another user's process) answers for itself. Pure.
 */
export function serverEndOwner(
  rows: readonly TcpSocketRow[],
  connection: { readonly client: { address: string; port: number }; readonly server: { address: string; port: number } },
): number | null {
  const same = (a: { address: string; port: number }, b: { address: string; port: number }) =>
    a.port === b.port && canonicalAddress(a.address) === canonicalAddress(b.address);
  const row = rows.find(
    (candidate) => candidate.state !== TCP_LISTEN && same(candidate.local, connection.server) && same(candidate.remote, connection.client),
  );
  if (!row) return null;
  const listeners = rows.filter((candidate) => candidate.state === TCP_LISTEN && candidate.local.port === connection.server.port);
  const listener =
    listeners.find((candidate) => same(candidate.local, connection.server)) ??
    listeners.find((candidate) => WILDCARD_ADDRESSES.has(candidate.local.address));
  if (!listener) return row.uid; // no queue without a listener: the connection was accepted, its row is its owner's
  return row.uid === 0 || row.uid === listener.uid ? listener.uid : row.uid;
}

/**
 * What the kernel says of a connection's server end: run by a trusted uid,
 * by another (`stranger`), or not listed on this host (`unlisted`: another
 * network namespace or host).
 */
export type PeerVerdict =
  | { readonly phase: "trusted"; readonly uid: number }
  | { readonly phase: "stranger"; readonly uid: number }
  | { readonly phase: "unlisted" };

/** Where a connected socket's peer is: for the callers' messages. */
export interface PeerEndpoint {
  readonly address: string;
  readonly port: number;
}

/** How long the server's end may take to appear after the client's connect (loopback: the ACK is processed at once). */
const SERVER_END_WAIT_MS = 200;

/**
 * The kernel's verdict on the server at the other end of `socket`
 * (connected, nothing written yet): `trusted` when its owner is one of
 * `trustedUids`. The caller refuses anything else and closes the socket
 * unwritten.
 */
export async function judgeLocalPeer(socket: net.Socket, trustedUids: readonly number[]): Promise<PeerVerdict> {
  const client = { address: socket.localAddress ?? "", port: socket.localPort ?? 0 };
  const server = peerOf(socket);
  const deadline = Date.now() + SERVER_END_WAIT_MS;
  for (;;) {
    const rows = parseTcpTable(
      (await Promise.all(["/proc/net/tcp", "/proc/net/tcp6"].map((file) => readFile(file, "utf8").catch(() => "")))).join("\n"),
    );
    const owner = serverEndOwner(rows, { client, server });
    if (owner !== null) return trustedUids.includes(owner) ? { phase: "trusted", uid: owner } : { phase: "stranger", uid: owner };
    if (Date.now() >= deadline) return { phase: "unlisted" };
    await sleep(5);
  }
}

/** The server end of a connected socket. */
export function peerOf(socket: net.Socket): PeerEndpoint {
  return { address: socket.remoteAddress ?? "", port: socket.remotePort ?? 0 };
}

/** Relevo's own OS user (root, usually). */
export function ownUid(): number {
  return process.geteuid?.() ?? 0;
}

/** Waits for the socket's connect; false when it failed or timed out (its error is the socket's own, for its user to report). */
export function socketConnected(socket: net.Socket, timeoutMs: number): Promise<boolean> {
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
