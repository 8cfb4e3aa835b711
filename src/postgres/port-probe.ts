import net from "node:net";

/**
 * What answers on a node's address, asked the way a PostgreSQL client
 * starts: a TCP connection, then an SSLRequest, the one message every
 * PostgreSQL server answers with a single byte before any authentication
 * ('S' or 'N'). No credentials are needed, and the server logs nothing for a
 * client that leaves after it. A connection, not a bind: binding says only
 * whether this process could listen there, and fails for reasons that have
 * nothing to do with a server (an address not of this machine, a port below
 * 1024 without privileges).
 */
export type PortProbe =
  /** A PostgreSQL server answered (running, or starting or stopping: it answers the SSLRequest then too). */
  | { readonly answer: "postgres" }
  /** The connection was refused: nothing listens there. */
  | { readonly answer: "nothing" }
  /** Something accepts connections but did not answer as PostgreSQL: another program, or a frozen server. */
  | { readonly answer: "other"; readonly detail: string }
  /** Neither a connection nor a refusal (no route, a name that does not resolve, no answer in time): cannot tell. */
  | { readonly answer: "unknown"; readonly detail: string };

/** SSLRequest: length 8, then the code 1234 5679 (80877103). */
export const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

/** A failed connection, by its error code: only a refusal says that nothing listens. Pure. */
export function connectFailure(code: string | undefined): PortProbe {
  if (code === "ECONNREFUSED") return { answer: "nothing" };
  return { answer: "unknown", detail: `the connection failed with ${code ?? "an error"}` };
}

/**
 * What a server sent back first to the SSLRequest (null: it closed without a
 * word). PostgreSQL answers one byte, 'S' or 'N', and then waits for the
 * client (a TLS handshake, or the startup packet): a reply of more bytes is
 * another program's (an SSH banner starts with 'S' too). An ErrorResponse
 * ('E', its length, its fields) is PostgreSQL refusing before it reads the
 * request (a server older than SSL support). Pure.
 */
export function sslRequestReply(reply: Buffer | null): PortProbe {
  if (reply === null || reply.length === 0)
    return { answer: "other", detail: "it accepted a connection and closed it without answering as PostgreSQL" };
  const first = reply[0]!;
  if (reply.length === 1 && (first === 0x53 || first === 0x4e)) return { answer: "postgres" };
  if (first === 0x45 && reply.length >= 5 && reply.readInt32BE(1) === reply.length - 1) return { answer: "postgres" };
  return {
    answer: "other",
    detail: `it answered PostgreSQL's SSLRequest with ${reply.length} bytes starting 0x${first.toString(16).padStart(2, "0")}, not as PostgreSQL`,
  };
}

/** Connects to `host`:`port` and asks it PostgreSQL's SSLRequest; within `timeoutMs` in all. */
export function probePort(host: string, port: number, options: { timeoutMs: number }): Promise<PortProbe> {
  return new Promise((resolve) => {
    let connected = false;
    let settled = false;
    const socket = net.connect({ host, port });
    const finish = (probe: PortProbe): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(probe);
    };
    const timer = setTimeout(
      () =>
        finish(
          connected
            ? {
                answer: "other",
                detail: `it accepted a connection but did not answer PostgreSQL's SSLRequest within ${options.timeoutMs} ms (a frozen server, or another program)`,
              }
            : { answer: "unknown", detail: `no connection nor refusal within ${options.timeoutMs} ms` },
        ),
      options.timeoutMs,
    );
    socket.once("connect", () => {
      connected = true;
      socket.write(SSL_REQUEST);
    });
    socket.once("data", (chunk: Buffer) => finish(sslRequestReply(chunk)));
    socket.once("end", () => finish(sslRequestReply(null)));
    socket.once("error", (error: NodeJS.ErrnoException) => finish(connected ? sslRequestReply(null) : connectFailure(error.code)));
  });
}
