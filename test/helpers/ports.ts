import net from "node:net";

const handedOut = new Set<number>();

/** A port nothing listens on right now (and not handed out before in this process). */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = net.createServer();
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => {
        const address = server.address() as net.AddressInfo;
        server.close(() => resolve(address.port));
      });
    });
    if (!handedOut.has(port) && !handedOut.has(port + 1)) {
      handedOut.add(port);
      return port;
    }
  }
}
