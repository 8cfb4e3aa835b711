import net from "node:net";
import tls from "node:tls";
import type { ErrorEmitter } from "ioredis/built/connectors/AbstractConnector";
import StandaloneConnector, { type StandaloneConnectionOptions } from "ioredis/built/connectors/StandaloneConnector";
import type { NetStream } from "ioredis/built/types";
import { ErrorCode, RelevoError, UnreachableCaseError } from "../errors";
import { judgeLocalPeer, ownUid, peerOf, socketConnected, type PeerEndpoint } from "../util/local-peer";

/*
 * Relevo's own Redis is proven to be run by Relevo's own OS user before any
 * byte is sent to it, AUTH (the password) first among them. Anything that
 * answers +PONG would do for a ping; the port of a Redis that is down is
 * free for any local user to take, and ioredis sends AUTH the moment it
 * connects, on every reconnection too.
 *
 * The proof is the kernel's (src/util/local-peer.ts): the server's end of
 * the very connection is owned by Relevo's own uid (root, usually; the
 * embedded Redis runs as Relevo's user), a user who could read
 * secrets.json anyway. Any other user's server, however it answers, is
 * refused and the socket closed unwritten. What it does not prove: which
 * of Relevo's user's processes it is (another home's Redis would get a
 * wrong password and refuse it). A server in another network namespace (a
 * container) has no entry here and cannot be proven: RELEVO_REDIS_URL's
 * server is not checked this way (docs/security.md).
 */

/**
 * Proves the server at the other end of `socket` (connected, nothing
 * written yet) runs as `trustedUid` (Relevo's own by default); else
 * throws REDIS_NOT_OURS. The caller closes the socket on a refusal.
 */
export async function proveRedisPeer(socket: net.Socket, trustedUid: number = ownUid()): Promise<void> {
  const verdict = await judgeLocalPeer(socket, [trustedUid]);
  switch (verdict.phase) {
    case "trusted":
      return;
    case "stranger":
      throw redisNotOurs(peerOf(socket), `it is run by uid ${verdict.uid}, not by Relevo's own user (uid ${trustedUid})`);
    case "unlisted":
      throw redisNotOurs(peerOf(socket), "the kernel lists no server end of the connection on this host (another network namespace?)");
    default:
      throw new UnreachableCaseError(verdict);
  }
}

function redisNotOurs(server: PeerEndpoint, why: string): RelevoError {
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
 *
 * Over TLS (ioredis's `tls` option) the proof is made on the bare TCP
 * connection, before the TLS handshake's first byte, and TLS then runs over
 * that very socket: the connection is handed over once the handshake is
 * done and the server verified, so ioredis writes nothing (AUTH first) to a
 * server either check refused. TLS does not make the proof redundant: the
 * nodes' certificates come from the same CA for the same address, and the
 * PostgreSQL OS user can read its node's key (docs/security.md).
 */
export class OwnRedisConnector extends StandaloneConnector {
  /** The last refusal, for callers that want the typed error (a one-shot connect fails with ioredis's own). */
  refusal: RelevoError | null = null;
  private readonly tlsOptions: tls.ConnectionOptions | undefined;

  /** ioredis passes its whole options object (`unknown` in its ConnectorConstructor type). */
  constructor(options: unknown) {
    // The TCP connection is made plain (StandaloneConnector would start TLS at once); TLS is started here, after the proof.
    const { tls: tlsOptions, ...plain } = options as StandaloneConnectionOptions;
    super(plain);
    this.tlsOptions = tlsOptions;
  }

  override async connect(emitError: ErrorEmitter): Promise<NetStream> {
    const stream = await super.connect(emitError);
    // ioredis arms its connect timeout only on a stream still connecting: these waits keep one of their own.
    const timeoutMs = (this.options as { connectTimeout?: number }).connectTimeout ?? 10000;
    if (!(stream instanceof net.Socket) || !(await socketConnected(stream, timeoutMs))) return stream;
    try {
      await proveRedisPeer(stream);
      this.refusal = null;
    } catch (error) {
      this.refusal = error as RelevoError;
      this.firstError = error as Error;
      stream.destroy();
      return stream;
    }
    return this.tlsOptions ? this.secure(stream, this.tlsOptions, timeoutMs) : stream;
  }

  /** TLS over the proven socket; the TLS socket once verified, else destroyed with the failure as its first error. */
  private async secure(socket: net.Socket, options: tls.ConnectionOptions, timeoutMs: number): Promise<NetStream> {
    const host = (this.options as { host?: string }).host ?? "localhost";
    // The identity check compares `host` with the certificate's names (an IP address with its iPAddress entries).
    const secured = tls.connect({ ...options, socket, host, servername: net.isIP(host) === 0 ? host : undefined });
    this.stream = secured;
    const failure = await handshake(secured, timeoutMs);
    if (failure) {
      this.firstError = failure;
      secured.destroy();
    }
    return secured;
  }
}

/** Waits for the TLS handshake and the server's verification; the error when either failed or timed out. */
function handshake(socket: tls.TLSSocket, timeoutMs: number): Promise<Error | null> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => finish(Object.assign(new Error("TLS handshake ETIMEDOUT"), { code: "ETIMEDOUT" })), timeoutMs);
    const finish = (error: Error | null): void => {
      clearTimeout(timer);
      socket.off("secureConnect", onSecure);
      socket.off("error", onError);
      socket.off("close", onClose);
      resolve(error);
    };
    const onSecure = (): void => finish(null);
    const onError = (error: Error): void => finish(error);
    const onClose = (): void => finish(new Error("the connection closed during the TLS handshake"));
    socket.once("secureConnect", onSecure);
    socket.once("error", onError);
    socket.once("close", onClose);
  });
}
