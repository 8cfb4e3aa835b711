import { spawn, type ChildProcess } from "node:child_process";
import { createConnection, createServer, type AddressInfo, type Socket } from "node:net";
import { TLSSocket } from "node:tls";
import type { Duplex } from "node:stream";
import { createInterface } from "node:readline";

/**
 * Strangers listening where Relevo expects its own servers: each records
 * every byte a client sends it, so a test can say what a stranger got.
 */
export interface FakeServer {
  readonly port: number;
  /** Everything received from clients, in order, once what was sent so far has all arrived. */
  received(): Promise<Buffer>;
  close(): Promise<void>;
}

/**
 * How a fake PostgreSQL authenticates: asks for a password in clear
 * (AuthenticationCleartextPassword, 3) or as MD5 (5); SCRAM-SHA-256 (SASL,
 * 10) whose server-first message it sends as a server would, then, unable
 * to give the server's proof, either closes or lets the client in without
 * it; or lets the client in at once (`trust`). Over TLS it offers
 * SCRAM-SHA-256-PLUS (channel binding) too, as PostgreSQL does, unless
 * `scram-without-channel-binding`.
 */
export type PasswordRequest = "cleartext" | "md5" | "scram" | "scram-without-proof" | "scram-without-channel-binding" | "trust";

/** AuthenticationOk, then ReadyForQuery (idle): the client is in. */
const letIn = Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 0, 0x5a, 0, 0, 0, 5, 0x49]);

/**
 * `tls`: the certificate and key the stranger answers an SSLRequest with
 * (one a client trusts: a node's key read by whoever runs as the
 * PostgreSQL OS user); without, it answers "N" (no TLS), as a plain
 * stranger would.
 */
export async function fakePostgres(request: PasswordRequest, options: { tls?: { cert: string; key: string } } = {}): Promise<FakeServer> {
  const afterRequest: Buffer[] = [];
  const sockets = new Set<Socket>();
  const closed: Promise<void>[] = [];
  const server = createServer((raw) => {
    sockets.add(raw);
    closed.push(new Promise((resolve) => raw.once("close", () => resolve())));
    raw.on("close", () => sockets.delete(raw));
    raw.on("error", () => undefined);
    let socket: Duplex = raw;
    let pending = Buffer.alloc(0);
    let asked = false;
    let afterThisRequest = Buffer.alloc(0);
    let serverFirstSent = false;
    const onData = (chunk: Buffer): void => {
      if (asked) {
        afterRequest.push(chunk);
        afterThisRequest = Buffer.concat([afterThisRequest, chunk]);
        if (request.startsWith("scram")) serverFirstSent = answerScram(socket, afterThisRequest, serverFirstSent, request);
        return;
      }
      pending = Buffer.concat([pending, chunk]);
      while (!asked && pending.length >= 8 && pending.length >= pending.readInt32BE(0)) {
        const length = pending.readInt32BE(0);
        const code = pending.readInt32BE(4);
        pending = pending.subarray(length);
        if (code === 80877103 && options.tls) {
          // SSLRequest: "S", then the rest of the conversation over TLS (what is recorded is what TLS carried).
          raw.write("S");
          raw.removeListener("data", onData);
          const secure = new TLSSocket(raw, { isServer: true, cert: options.tls.cert, key: options.tls.key });
          secure.on("error", () => undefined);
          secure.on("data", onData);
          socket = secure;
          return;
        }
        if (code === 80877103) {
          socket.write("N"); // SSLRequest: no TLS here
          continue;
        }
        socket.write(
          request === "cleartext"
            ? authRequest(3)
            : request === "md5"
              ? authRequest(5, Buffer.from([1, 2, 3, 4]))
              : request === "trust"
                ? letIn
                : authRequest(
                    10,
                    Buffer.from(
                      socket !== raw && request !== "scram-without-channel-binding"
                        ? "SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
                        : "SCRAM-SHA-256\0\0",
                    ),
                  ),
        );
        asked = true;
        if (pending.length > 0) afterRequest.push(pending);
      }
    };
    raw.on("data", onData);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as AddressInfo).port,
    // A client's bytes have all arrived once its connection closed (the refusing client closes it at once).
    // Bounded: a client that hangs on (an old, answering one waits for the fake's reply) fails the test, not the run.
    received: async () => {
      let timer: NodeJS.Timeout | undefined;
      const bound = new Promise<void>((resolve) => (timer = setTimeout(resolve, 5000)));
      await Promise.race([Promise.all(closed), bound]).finally(() => clearTimeout(timer));
      return Buffer.concat(afterRequest);
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/**
 * SCRAM's server-first message once the client's first message (its nonce)
 * is in, and the end once its final message (its proof) is. Whether the
 * server-first message has been sent, before and after.
 */
function answerScram(socket: Duplex, received: Buffer, serverFirstSent: boolean, request: PasswordRequest): boolean {
  const text = received.toString("latin1");
  // The client-final message: "c=biws" (n,,: no channel binding), "c=eSws" (y,,: the client could bind, the server
  // offered no PLUS), or "c=cD10bHMt…" (p=tls-server-end-point,,: bound to the certificate, over TLS).
  if (/c=(biws|eSws|cD1[A-Za-z0-9+/=]+),r=/.test(text)) {
    if (request === "scram-without-proof") socket.write(letIn);
    else socket.end();
    return true;
  }
  const nonce = /(?:[ny]|p=[a-z-]+),,n=[^,]*,r=([A-Za-z0-9+/=]+)/.exec(text)?.[1];
  if (serverFirstSent || !nonce) return serverFirstSent;
  socket.write(authRequest(11, Buffer.from(`r=${nonce}fake-server-nonce,s=${Buffer.alloc(16, 7).toString("base64")},i=4096`)));
  return true;
}

function authRequest(code: number, salt?: Buffer): Buffer {
  const message = Buffer.alloc(9 + (salt?.length ?? 0));
  message.write("R", 0);
  message.writeInt32BE(8 + (salt?.length ?? 0), 1);
  message.writeInt32BE(code, 5);
  salt?.copy(message, 9);
  return message;
}

/**
 * What a stranger run by another OS user answers: as a "Redis" (+PONG to a
 * PING, +OK to anything else, AUTH included), or as an "API" (an HTTP 200
 * with `{"data":{}}` to whatever comes first, then the connection closed).
 */
export type StrangerAnswer = "redis" | "http";

const ANSWERS: Record<StrangerAnswer, string> = {
  redis: `socket.write(chunk.toString().toUpperCase().includes("PING") ? "+PONG\\r\\n" : "+OK\\r\\n");`,
  http: `if (!answered) socket.end("HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: 11\\r\\nconnection: close\\r\\n\\r\\n{\\"data\\":{}}");
        answered = true;`,
};

/**
 * A server run by another OS user (`uid`, e.g. nobody's; becoming another
 * user takes root), answering as `answer` says, reporting every byte it gets.
 */
export async function fakeServerOfAnotherUser(uid: number, answer: StrangerAnswer): Promise<FakeServer> {
  // Started as root and dropped to \`uid\` before the socket exists (the socket's owner is who made it): the node
  // binary may live where \`uid\` cannot execute it (the pinned Node under /root/.cache, as in CI).
  const script = `
    process.setgid(${uid});
    process.setuid(${uid});
    const net = require("node:net");
    const server = net.createServer((socket) => {
      let answered = false;
      socket.on("error", () => undefined);
      socket.on("data", (chunk) => {
        process.stdout.write(JSON.stringify({ data: chunk.toString("base64") }) + "\\n");
        ${ANSWERS[answer]}
      });
    });
    server.listen(0, "127.0.0.1", () => process.stdout.write(JSON.stringify({ port: server.address().port }) + "\\n"));
  `;
  const child = spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "inherit"], cwd: "/" });
  const received: Buffer[] = [];
  const port = await new Promise<number>((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`the fake ${answer} server exited with ${code}`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const message = JSON.parse(line) as { port?: number; data?: string };
      if (message.port) resolve(message.port);
      if (message.data) received.push(Buffer.from(message.data, "base64"));
    });
  });
  // The child reports each chunk before it answers it: once a marker sent now is reported, so is everything before.
  const drained = async (): Promise<Buffer> => {
    const seen = received.length;
    const marker = createConnection(port, "127.0.0.1");
    marker.on("error", () => undefined);
    marker.write(MARKER);
    while (!received.slice(seen).some((chunk) => chunk.toString() === MARKER)) await new Promise((resolve) => setTimeout(resolve, 10));
    marker.destroy();
    return Buffer.concat(received.filter((chunk) => chunk.toString() !== MARKER));
  };
  return { port, received: drained, close: () => stopChild(child) };
}

const MARKER = "*1\r\n$11\r\nTEST-MARKER\r\n";

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise<void>((resolve) => {
    child.once("exit", () => resolve());
    child.kill("SIGKILL");
  });
}
