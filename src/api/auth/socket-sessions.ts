import type { WebSocket } from "ws";
import { ErrorCode, RelevoError, isRelevoError } from "../../errors";
import type { TokenAccess } from "../../secrets/token-access";
import type { TokenIdentity } from "../../secrets/tokens";
import { TRY_AGAIN_LATER_CLOSE_CODE } from "../socket-admission";
import { authenticate } from "./auth";

/** graphql-ws's close code for authentication (CloseCode.Unauthorized); the reason names our error code. */
export const TOKEN_REFUSED_CLOSE_CODE = 4401;

/** setTimeout's longest delay (about 24.8 days): a longer expiry is reached in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Session {
  readonly identity: TokenIdentity;
  readonly keyGeneration: number;
  timer: NodeJS.Timeout | null;
}

/**
 * The open WebSockets and the token each was opened with. A WebSocket is
 * authenticated once (connection_init) but lives on, so its token is
 * checked again on every operation it starts (`recheck`), when it expires (a
 * timer per socket), and whenever the home's revocations or key change
 * (TokenAccess's listeners): a socket whose token is no longer accepted is
 * closed with 4401 and the refusal's code (TOKEN_EXPIRED, TOKEN_REVOKED, or
 * UNAUTHENTICATED after a key rotation) as the reason.
 */
export class SocketSessions {
  private readonly sessions = new Map<WebSocket, Session>();
  private readonly unlisten: () => void;

  constructor(private readonly tokens: TokenAccess) {
    this.unlisten = tokens.onChange(() => {
      for (const socket of this.sessions.keys()) this.recheck(socket);
    });
  }

  get size(): number {
    return this.sessions.size;
  }

  /** The open sockets of the token `id`. */
  countOf(id: string): number {
    let count = 0;
    for (const session of this.sessions.values()) if (session.identity.id === id) count += 1;
    return count;
  }

  admit(socket: WebSocket, identity: TokenIdentity): void {
    const session: Session = { identity, keyGeneration: this.tokens.keyGeneration, timer: null };
    this.sessions.set(socket, session);
    this.armExpiry(socket, session);
    socket.once("close", () => this.forget(socket));
  }

  /** The refusal of the socket's token now, after closing the socket; null while it is accepted. */
  recheck(socket: WebSocket): RelevoError | null {
    const session = this.sessions.get(socket);
    if (!session) return null; // closing already
    const refusal = this.refusal(session);
    if (refusal) refuse(socket, refusal);
    return refusal;
  }

  dispose(): void {
    this.unlisten();
    for (const socket of [...this.sessions.keys()]) this.forget(socket);
  }

  private refusal(session: Session): RelevoError | null {
    if (session.keyGeneration !== this.tokens.keyGeneration) {
      return this.tokens.rotatedKeyRefusal(session.identity);
    }
    const check = this.tokens.recheck(session.identity);
    return check.phase === "refused" ? check.error : null;
  }

  private armExpiry(socket: WebSocket, session: Session): void {
    const delay = Math.max(0, session.identity.expiresAt - Date.now());
    session.timer = setTimeout(
      () => {
        if (this.recheck(socket) === null) this.armExpiry(socket, session);
      },
      Math.min(delay, MAX_TIMER_MS),
    );
    session.timer.unref();
  }

  private forget(socket: WebSocket): void {
    const session = this.sessions.get(socket);
    if (session?.timer) clearTimeout(session.timer);
    this.sessions.delete(socket);
  }
}

/** Closes a socket for a refused token; the reason (at most 123 bytes) is the error's code. */
export function refuse(socket: WebSocket, refusal: RelevoError): void {
  socket.close(TOKEN_REFUSED_CLOSE_CODE, refusal.code);
}

export type SocketConnection =
  | { readonly phase: "admitted"; readonly identity: TokenIdentity }
  /** `identity`: the token, when it was accepted and the socket refused for a limit. */
  | { readonly phase: "refused"; readonly refusal: RelevoError; readonly identity?: TokenIdentity };

/**
 * graphql-ws's onConnect: authenticates connection_init's token and admits
 * the socket. A missing or forged token is refused and graphql-ws closes
 * the socket with 4403 Forbidden; an expired or revoked one closes with 4401
 * and its code; a token that already has `maxSocketsPerToken` sockets open
 * closes with 1013 (Try Again Later) and TOO_MANY_CONNECTIONS.
 */
export function connectSocket(
  sessions: SocketSessions,
  tokens: TokenAccess,
  ctx: { connectionParams?: Readonly<Record<string, unknown>>; extra: { socket: WebSocket; identity?: TokenIdentity } },
  maxSocketsPerToken: number,
): SocketConnection {
  let identity: TokenIdentity;
  try {
    identity = authenticate(tokens, authorizationFromParams(ctx.connectionParams));
  } catch (error) {
    // Fail closed: whatever went wrong, the socket is not admitted.
    const refusal = isRelevoError(error) ? error : new RelevoError(ErrorCode.Unauthenticated, "the token could not be checked");
    if (refusal.code !== ErrorCode.Unauthenticated) refuse(ctx.extra.socket, refusal);
    return { phase: "refused", refusal };
  }
  if (sessions.countOf(identity.id) >= maxSocketsPerToken) {
    const refusal = new RelevoError(
      ErrorCode.TooManyConnections,
      `this token has ${maxSocketsPerToken} WebSockets open already (RELEVO_API_MAX_WEBSOCKETS_PER_TOKEN)`,
    );
    ctx.extra.socket.close(TRY_AGAIN_LATER_CLOSE_CODE, refusal.code);
    return { phase: "refused", refusal, identity };
  }
  ctx.extra.identity = identity;
  sessions.admit(ctx.extra.socket, identity);
  return { phase: "admitted", identity };
}

function authorizationFromParams(params: Readonly<Record<string, unknown>> | undefined): string | undefined {
  if (!params) return undefined;
  const headers = (params.headers ?? {}) as Record<string, unknown>;
  const value = params.authorization ?? params.Authorization ?? headers.authorization ?? headers.Authorization;
  return typeof value === "string" ? value : undefined;
}
