import net from "node:net";
import { ErrorCode, RelevoError } from "../errors";

/**
 * Whether this process could listen on `host`:`port` right now: a bind test,
 * for a port about to be bound on this machine (a node's, Redis's, the
 * API's). Any bind failure reads as not free, EADDRINUSE or not (an address
 * not of this machine, a privileged port): it does not say that something
 * answers there (see postgres/port-probe.ts for that).
 */
export function isPortFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once("error", () => resolve(false));
    server.listen({ host, port, exclusive: true }, () => {
      server.close(() => resolve(true));
    });
  });
}

/** Fails with PORT_IN_USE naming the port, its user and the variable to change. */
export async function assertPortFree(host: string, port: number, what: string, env: string): Promise<void> {
  if (await isPortFree(host, port)) return;
  throw new RelevoError(
    ErrorCode.PortInUse,
    `port ${port} on ${host} (${what}) is already in use by another process; stop it or set ${env} to a free port`,
    { details: { port, env } },
  );
}

/** A port the kernel says is free right now on `host` (for scratch servers). */
export function findFreePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen({ host, port: 0 }, () => {
      const address = server.address() as net.AddressInfo;
      server.close(() => resolve(address.port));
    });
  });
}
