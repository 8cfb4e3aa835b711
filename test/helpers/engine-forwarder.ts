import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import tls from "node:tls";
import { promisify } from "node:util";

const run = promisify(execFile);

/**
 * The local Docker engine reached over TCP on 127.0.0.1, optionally behind
 * TLS with client certificates (as `dockerd --tlsverify` serves it, or a TLS
 * terminator in front of the socket does): every connection is forwarded,
 * byte for byte, to /var/run/docker.sock. The tests use it where they need an
 * engine endpoint of their own that they can cut and restore while the
 * containers go on running (one engine serves every suite; it cannot be
 * stopped or restarted with other flags under them).
 */
export interface EngineForwarder {
  /** tcp://127.0.0.1:<port>, for RELEVO_DOCKER_HOST. */
  readonly host: string;
  /** Closes the endpoint and every connection through it: the engine "goes away" for its clients. */
  cut(): Promise<void>;
  /** Listens again on the same port. */
  restore(): Promise<void>;
  close(): Promise<void>;
}

export interface TlsMaterial {
  /** A directory with ca.pem, cert.pem, key.pem: what a client passes as RELEVO_DOCKER_CERT_PATH. */
  readonly clientCertPath: string;
  /** Another client's certificates, signed by a CA the endpoint does not trust. */
  readonly strangerCertPath: string;
  readonly serverOptions: tls.TlsOptions;
  remove(): Promise<void>;
}

export async function startEngineForwarder(options: { tls?: TlsMaterial; socketPath?: string } = {}): Promise<EngineForwarder> {
  const socketPath = options.socketPath ?? "/var/run/docker.sock";
  const open = new Set<net.Socket>();
  let cutOff = false;
  // Half-closed connections stay open the other way, as the engine's own
  // endpoints do: `docker exec` ends a command's input by half-closing and
  // reads its output after.
  const forward = (client: net.Socket): void => {
    if (cutOff) {
      client.destroy(); // its TLS handshake finished after the cut
      return;
    }
    const engine = net.connect({ path: socketPath, allowHalfOpen: true });
    open.add(client);
    open.add(engine);
    const close = (): void => {
      client.destroy();
      engine.destroy();
      open.delete(client);
      open.delete(engine);
    };
    client.on("error", close).on("close", close);
    engine.on("error", close).on("close", close);
    client.pipe(engine);
    engine.pipe(client);
  };
  const makeServer = (): net.Server => {
    const made = options.tls
      ? tls
          .createServer({ ...options.tls.serverOptions, requestCert: true, rejectUnauthorized: true, allowHalfOpen: true }, forward)
          .on("tlsClientError", () => undefined)
      : net.createServer({ allowHalfOpen: true }, forward);
    // Every accepted socket, handshakes in progress included, goes with a cut.
    return made.on("connection", (socket: net.Socket) => {
      open.add(socket);
      socket.on("close", () => open.delete(socket));
    });
  };

  const listen = (candidate: net.Server, port: number): Promise<number> =>
    new Promise((resolve, reject) => {
      candidate.once("error", reject);
      candidate.listen(port, "127.0.0.1", () => resolve((candidate.address() as net.AddressInfo).port));
    });
  let server = makeServer();
  const port = await listen(server, 0);
  const shut = async (): Promise<void> => {
    cutOff = true;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const socket of open) socket.destroy();
    open.clear();
    await closed;
  };
  return {
    host: `tcp://127.0.0.1:${port}`,
    cut: shut,
    restore: async () => {
      if (server.listening) return;
      const again = makeServer();
      cutOff = false;
      await listen(again, port);
      server = again;
    },
    close: async () => {
      if (server.listening) await shut();
    },
  };
}

/** A throw-away CA, a server certificate for 127.0.0.1, and client certificates (one trusted, one not), made with openssl. */
export async function makeTlsMaterial(): Promise<TlsMaterial> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "relevo-engine-tls-"));
  const openssl = (...args: string[]) => run("openssl", args, { cwd: dir });
  const authority = async (name: string): Promise<void> => {
    await openssl(
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "1",
      "-subj",
      `/CN=${name}`,
      "-keyout",
      `${name}-key.pem`,
      "-out",
      `${name}.pem`,
    );
  };
  const sign = async (ca: string, name: string, extensions: string): Promise<void> => {
    await openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", `/CN=${name}`, "-keyout", `${name}-key.pem`, "-out", `${name}.csr`);
    await writeFile(path.join(dir, `${name}.ext`), extensions);
    await openssl(
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      `${ca}.pem`,
      "-CAkey",
      `${ca}-key.pem`,
      "-CAcreateserial",
      "-days",
      "1",
      "-extfile",
      `${name}.ext`,
      "-out",
      `${name}.pem`,
    );
  };
  await authority("ca");
  await authority("other-ca");
  await sign("ca", "server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  await sign("ca", "client", "extendedKeyUsage=clientAuth\n");
  await sign("other-ca", "stranger", "extendedKeyUsage=clientAuth\n");
  const clientDir = async (name: string, cert: string): Promise<string> => {
    const target = path.join(dir, name);
    await mkdir(target, { mode: 0o700 });
    await writeFile(path.join(target, "ca.pem"), await readFile(path.join(dir, "ca.pem")));
    await writeFile(path.join(target, "cert.pem"), await readFile(path.join(dir, `${cert}.pem`)));
    await writeFile(path.join(target, "key.pem"), await readFile(path.join(dir, `${cert}-key.pem`)), { mode: 0o600 });
    return target;
  };
  return {
    clientCertPath: await clientDir("client-certs", "client"),
    strangerCertPath: await clientDir("stranger-certs", "stranger"),
    serverOptions: {
      ca: await readFile(path.join(dir, "ca.pem")),
      cert: await readFile(path.join(dir, "server.pem")),
      key: await readFile(path.join(dir, "server-key.pem")),
    },
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}
