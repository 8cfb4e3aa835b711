import net from "node:net";
import tls from "node:tls";
import { ErrorCode, RelevoError } from "../errors";
import type { NodeRef } from "../nodes/node-driver";
import type { TrustAnchors } from "./connection";
import { SSL_REQUEST } from "./port-probe";

/**
 * The certificate a node presents to a new TLS client right now (PEM), as
 * a client sees it: PostgreSQL's SSLRequest, then a TLS handshake verified
 * as Relevo's own connections verify it (the chain against `trust`, the
 * certificate against the host). No credentials: the client leaves after
 * the handshake. What a certificate rotation checks after a reload.
 */
export function servedCertificate(node: NodeRef, options: { readonly trust: TrustAnchors; readonly timeoutMs: number }): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: node.host, port: node.port });
    let secure: tls.TLSSocket | null = null;
    const fail = (message: string, cause?: unknown): void => {
      clearTimeout(timer);
      secure?.destroy();
      socket.destroy();
      reject(new RelevoError(ErrorCode.CommandFailed, `the certificate node ${node.name} serves could not be read: ${message}`, { cause }));
    };
    const timer = setTimeout(() => fail(`no TLS handshake within ${options.timeoutMs} ms`), options.timeoutMs);
    socket.once("error", (error) => fail(error.message, error));
    socket.once("connect", () => socket.write(SSL_REQUEST));
    socket.once("data", (reply) => {
      if (reply.length !== 1 || reply[0] !== 0x53) return fail("the server does not accept TLS");
      secure = tls.connect({
        socket,
        host: node.host,
        // SNI takes host names only; Node checks an IP address against the certificate's iPAddress entries.
        ...(net.isIP(node.host) === 0 ? { servername: node.host } : {}),
        ca: options.trust.pem,
        rejectUnauthorized: true,
      });
      secure.once("error", (error: Error) => fail(error.message, error));
      secure.once("secureConnect", () => {
        const certificate = secure!.getPeerX509Certificate();
        clearTimeout(timer);
        secure!.destroy();
        if (certificate === undefined) reject(new RelevoError(ErrorCode.CommandFailed, `node ${node.name} presented no certificate`));
        else resolve(certificate.toString());
      });
    });
  });
}
