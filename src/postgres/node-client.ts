import { Client, type ClientConfig } from "pg";
import { ErrorCode, RelevoError } from "../errors";

/**
 * The authentications a node-postgres client would go along with and
 * Relevo's refuses: two that take the password, and two that let a
 * stranger in without proving it knows the password's verifier.
 */
export type RefusedAuthMethod =
  "cleartext password" | "MD5 password" | "session without SCRAM" | "SCRAM without the server's proof" | "SCRAM without channel binding";

export interface NodeClientConfig extends ClientConfig {
  /** The node this connection is for, named in a refusal (else host:port). */
  readonly nodeName?: string;
}

/**
 * The only `pg` Client Relevo opens (an ESLint rule keeps it so; Prisma's
 * pool is given it as its `Client`). It never sends a password in clear nor
 * as MD5: whoever listens on a member's port — a stopped member's port
 * taken by another local user, a server started by hand — could ask for
 * either, and node-postgres would answer with the superuser's password
 * (cleartext) or a salted hash of it (MD5: guesses can be tested against
 * it offline, and a stranger in the middle can relay it to any server
 * that accepts MD5). Every Relevo node asks for SCRAM-SHA-256 (initdb
 * --auth=scram-sha-256, Relevo's pg_hba.conf), which never reveals the
 * password and in which the server proves it knows its verifier, so a
 * request for either is a stranger's: the connection is cut before
 * anything more is written and connect() fails with AUTH_METHOD_REFUSED.
 * So is a session the server opens without that proof (below).
 *
 * libpq 16 has `require_auth=scram-sha-256` for this; libpq 15 and
 * node-postgres have no such option, hence this subclass.
 */
export class NodeClient extends Client {
  constructor(config: NodeClientConfig = {}) {
    // Passed on whole, never copied: pg.Pool hands its clients an options
    // object whose password is not enumerable (a spread would drop it).
    // pg ignores `nodeName`.
    super(config);
    const target = config.nodeName ?? `${config.host ?? "localhost"}:${config.port ?? 5432}`;
    const connection = this.connection as RefusableConnection;
    // The last barrier: the Connection's `password` method writes the
    // PasswordMessage of cleartext and MD5 exchanges (SCRAM goes through
    // sendSASL* instead). pg's own handlers still run after the refusal
    // below and would call it; here it writes nothing.
    connection.password = () => undefined;
    const refuse = (method: RefusedAuthMethod) => () => {
      // Listeners run in order and ours is first: the connect callback gets
      // this error (pg reports only the first), then the socket goes.
      connection.emit("error", authMethodRefused(target, method));
      connection.stream.destroy();
    };
    connection.prependListener("authenticationCleartextPassword", refuse("cleartext password"));
    connection.prependListener("authenticationMD5Password", refuse("MD5 password"));
    // SCRAM's last message carries the server's proof, which pg verifies
    // (failing the connect if it is wrong) as it handles that message,
    // before the next one is read. A server that says AuthenticationOk
    // without it (or without asking for any password: `trust`) has proved
    // nothing, and would be believed about the member whose port it holds.
    let sasl: "none" | "started" | "proved" = "none";
    connection.on("authenticationSASL", () => (sasl = "started"));
    // Over TLS, SCRAM is bound to the server's certificate (SCRAM-SHA-256-PLUS), as libpq's
    // channel_binding=require: a server that does not offer it is not one of Relevo's nodes, which always do
    // over TLS (pg would fall back to plain SCRAM, whose exchange could be relayed to another server).
    if (config.ssl && config.enableChannelBinding) {
      connection.prependListener("authenticationSASL", (message: { mechanisms?: string[] }) => {
        if (!message.mechanisms?.includes("SCRAM-SHA-256-PLUS")) refuse("SCRAM without channel binding")();
      });
    }
    connection.on("authenticationSASLFinal", () => (sasl = "proved"));
    connection.prependListener("authenticationOk", () => {
      if (sasl === "proved") return;
      refuse(sasl === "none" ? "session without SCRAM" : "SCRAM without the server's proof")();
    });
  }
}

/** The part of pg's Connection this client changes (its `password` is untyped in @types/pg). */
type RefusableConnection = Client["connection"] & { password: (password: string) => void };

export function authMethodRefused(target: string, method: RefusedAuthMethod): RelevoError {
  const what =
    method === "cleartext password" || method === "MD5 password"
      ? `asked for a ${method}; Relevo authenticates to PostgreSQL with SCRAM-SHA-256 only and sent nothing`
      : method === "SCRAM without channel binding"
        ? "offered SCRAM without channel binding over TLS (Relevo's nodes offer SCRAM-SHA-256-PLUS); Relevo sent nothing"
        : `let Relevo in without proving it knows the password (${method}); Relevo's nodes always do`;
  return new RelevoError(
    ErrorCode.AuthMethodRefused,
    `what answers on ${target}'s port ${what}: another program may be listening on that port`,
    { details: { node: target, method } },
  );
}
