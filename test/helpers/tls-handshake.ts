import { once } from "node:events";
import type { AddressInfo } from "node:net";
import tls from "node:tls";

/** A TLS server with `server`'s certificate on loopback, and a client trusting `caPem` that verifies `servername` (verify-full). */
export async function handshake(server: { certificatePem: string; keyPem: string }, caPem: string, host: string): Promise<string> {
  const listener = tls.createServer({ cert: server.certificatePem, key: server.keyPem }, (socket) => socket.end());
  listener.listen(0, "127.0.0.1");
  await once(listener, "listening");
  const { port } = listener.address() as AddressInfo;
  try {
    return await new Promise<string>((resolve) => {
      const socket = tls.connect({
        host: "127.0.0.1",
        port,
        ca: caPem,
        servername: host === "127.0.0.1" ? undefined : host,
        checkServerIdentity: (_h, cert) => tls.checkServerIdentity(host, cert),
      });
      socket.once("secureConnect", () => {
        socket.destroy();
        resolve("verified");
      });
      socket.once("error", (error: Error) => resolve(error.message));
    });
  } finally {
    listener.close();
  }
}
