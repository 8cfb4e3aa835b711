import { stat } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import tls from "node:tls";
import type { Duplex } from "node:stream";
import { ErrorCode, RelevoError } from "../errors";
import { secretsFile } from "../secrets/secrets-store";
import { judgeLocalPeer, ownUid, peerOf, socketConnected, type PeerEndpoint, type PeerVerdict } from "../util/local-peer";

/*
 * The CLI sends an operator token (valid 15 minutes against the real
 * service, unrecorded) with every request to the API. While `relevo up` is
 * stopped or restarting, any local user can listen on RELEVO_API_PORT and
 * would receive it. So a connection is handed to the HTTP request, which
 * only then writes its headers, once the kernel shows that its server end
 * is run by a user who could read the token key anyway: root, the owner of
 * the data home's secrets.json (the user `relevo up` runs as: it made the
 * file, and rotations keep its owner), or the CLI's own user (who just read
 * it). The proof is the one Relevo's own Redis gets (src/util/local-peer.ts).
 *
 * Every address is proven, loopback or not: RELEVO_HOST is where the
 * service listens, on this host, and a connection to any address of this
 * host has its server end listed here, so a stranger who took the port on
 * a public address is refused the same way. A server end the kernel does
 * not list (a service in another network namespace or on another host) is
 * refused too, over HTTPS as well: the certificate is checked against the
 * services CA alone (a node's certificate, whose key the PostgreSQL user
 * reads, is refused), but the uid proof costs nothing here and also covers
 * the operator's own certificate (RELEVO_API_TLS_CERT_FILE). Such a client mints a token
 * with `relevo token` and sends it itself (docs/security.md). Over HTTPS the
 * agent then verifies the server's certificate on the proven connection.
 */

/** The uids whose servers may receive a token minted from `home`'s key: each could read the key itself. */
export async function apiTrustedUids(home: string): Promise<number[]> {
  const { uid } = await stat(secretsFile(home));
  return [...new Set([0, uid, ownUid()])];
}

/** The bound on a connect to the API: an answer on this host's own address is immediate. */
const CONNECT_TIMEOUT_MS = 10000;

/**
 * An http.Agent whose connections are proven before they are handed over:
 * a refused one is destroyed unwritten and the request fails with
 * API_NOT_OURS. No keep-alive: each request gets (and proves) its own.
 */
export class OwnApiAgent extends http.Agent {
  private readonly trustedUids: readonly number[];
  private readonly tls: ApiTls | undefined;

  constructor(options: { readonly trustedUids: readonly number[]; readonly tls?: ApiTls }) {
    super({ keepAlive: false });
    this.trustedUids = options.trustedUids;
    this.tls = options.tls;
  }

  /** Asynchronous creation (node:http's documented contract): the request waits for `callback`, its headers buffered. */
  override createConnection(options: net.NetConnectOpts, callback: (error: Error | null, socket: Duplex) => void): undefined {
    const socket = net.createConnection(options);
    const failed = (error: Error) => callback(error, socket);
    socket.once("error", failed);
    const handOver = async () => {
      if (!(await socketConnected(socket, CONNECT_TIMEOUT_MS))) return; // its error went to `failed`
      const verdict = await judgeLocalPeer(socket, this.trustedUids);
      socket.off("error", failed); // from here on the request listens for the socket's errors
      if (verdict.phase === "trusted") return this.tls ? this.secure(socket, this.tls, callback) : callback(null, socket);
      socket.destroy();
      callback(apiNotOurs(peerOf(socket), verdict, this.trustedUids), socket);
    };
    handOver().catch((error: unknown) => {
      socket.destroy();
      callback(error instanceof Error ? error : new Error(String(error)), socket);
    });
    return undefined;
  }

  /**
   * TLS on the proven connection, the server's certificate verified against
   * `tls.ca` and `tls.host` (Node's identity check: an IP address against
   * the certificate's iPAddress entries) before the request writes anything.
   */
  private secure(socket: net.Socket, apiTls: ApiTls, callback: (error: Error | null, socket: Duplex) => void): void {
    const secured = tls.connect({
      socket,
      ca: [...apiTls.ca],
      allowPartialTrustChain: apiTls.allowPartialTrustChain ?? false,
      host: apiTls.host,
      ...(net.isIP(apiTls.host) ? {} : { servername: apiTls.host }),
      rejectUnauthorized: true,
    });
    const failed = (error: Error) => {
      secured.destroy();
      callback(error, secured);
    };
    secured.once("error", failed);
    secured.once("secureConnect", () => {
      secured.off("error", failed);
      callback(null, secured);
    });
  }
}

/** An HTTPS API: the CAs its certificate is checked against, and the host it must name. */
export interface ApiTls {
  readonly ca: readonly string[];
  /** The operator's own API certificate is pinned: it is in `ca`, and may be its own anchor. */
  readonly allowPartialTrustChain?: boolean;
  readonly host: string;
}

function apiNotOurs(server: PeerEndpoint, verdict: Exclude<PeerVerdict, { phase: "trusted" }>, trusted: readonly number[]): RelevoError {
  const [why, remedy] =
    verdict.phase === "stranger"
      ? [
          `it is run by uid ${verdict.uid}, not by a user who can read the data home's secrets (uid ${trusted.join(", ")})`,
          "Stop that program, or set RELEVO_API_PORT to the port `relevo up` listens on",
        ]
      : [
          "the kernel lists no server end of the connection on this host (another network namespace or host), so it cannot be proven",
          "Run the CLI where `relevo up` runs, or mint a token with `relevo token` for a client of your own",
        ];
  return new RelevoError(
    ErrorCode.ApiNotOurs,
    `what answers on the API's port ${server.address}:${server.port} is not Relevo's own service: ${why}. No token was sent. ${remedy}`,
    { details: { env: "RELEVO_API_PORT", port: server.port } },
  );
}
