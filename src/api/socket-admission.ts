import type { IncomingMessage } from "node:http";
import type { Socket } from "node:net";

/**
 * How many WebSockets the API keeps open, and how many operations each may
 * run at once. Every open socket holds memory, timers and (once it
 * subscribes) a Redis pub/sub listener; without bounds one client, with or
 * without a token, could open sockets until the process runs out of file
 * descriptors or memory, and the failover monitor with it.
 */
export interface SocketLimits {
  /** Open WebSockets in all, authenticated or not. */
  readonly maxSockets: number;
  /** Open WebSockets of one token. */
  readonly maxSocketsPerToken: number;
  /** Sockets of one address that have not yet sent an accepted connection_init (at most 3 s each). */
  readonly maxPendingPerAddress: number;
  /**
   * Sockets without an accepted token, of all addresses together: a share
   * of maxSockets, so that sockets opened without a token (from as many
   * addresses as 127.0.0.0/8 gives a local user) never take the room of
   * authenticated ones (review 14).
   */
  readonly maxPending: number;
  /** Operations (subscriptions, queries) one socket runs at once. */
  readonly maxOperationsPerSocket: number;
}

/** Sockets of one address before their token is accepted: enough for a few tabs reconnecting at once. */
export const MAX_PENDING_SOCKETS_PER_ADDRESS = 16;
/** Operations one socket runs at once: far more than GraphiQL or a dashboard opens. */
export const MAX_OPERATIONS_PER_SOCKET = 100;

/** The share of RELEVO_API_MAX_WEBSOCKETS that sockets without an accepted token may hold: a quarter. */
export function maxPendingSockets(maxSockets: number): number {
  return Math.max(1, Math.floor(maxSockets / 4));
}

/** The close code of a socket refused for a limit: WebSocket's "Try Again Later"; the reason is TOO_MANY_CONNECTIONS. */
export const TRY_AGAIN_LATER_CLOSE_CODE = 1013;

export type UpgradeVerdict =
  { readonly phase: "admitted" } | { readonly phase: "refused"; readonly status: 429 | 503; readonly message: string };

interface Tracked {
  readonly address: string;
  pending: boolean;
}

/**
 * The socket counts, kept per TCP connection from the moment its upgrade is
 * admitted (before the WebSocket exists) until the TCP connection closes,
 * which it always does, whatever became of the handshake: a count taken at
 * upgrade and given back on "close" cannot leak.
 */
export class SocketAdmission {
  private readonly tracked = new Map<Socket, Tracked>();
  private readonly pendingByAddress = new Map<string, number>();
  private pending = 0;

  constructor(private readonly limits: SocketLimits) {}

  get open(): number {
    return this.tracked.size;
  }

  /** At the upgrade request, before the handshake: counts the socket when it is admitted. */
  admitUpgrade(request: Pick<IncomingMessage, "socket">, address: string): UpgradeVerdict {
    const verdict = upgradeVerdict(this.limits, {
      open: this.tracked.size,
      pending: this.pending,
      pendingOfAddress: this.pendingByAddress.get(address) ?? 0,
    });
    if (verdict.phase === "refused") return verdict;
    const socket = request.socket;
    this.tracked.set(socket, { address, pending: true });
    this.addPending(address, 1);
    socket.once("close", () => {
      const entry = this.tracked.get(socket);
      this.tracked.delete(socket);
      if (entry?.pending) this.addPending(entry.address, -1);
    });
    return verdict;
  }

  /** The socket's token was accepted: it no longer counts against its address's pending sockets. */
  authenticated(request: Pick<IncomingMessage, "socket">): void {
    const entry = this.tracked.get(request.socket);
    if (!entry?.pending) return;
    entry.pending = false;
    this.addPending(entry.address, -1);
  }

  private addPending(address: string, delta: number): void {
    this.pending += delta;
    const count = (this.pendingByAddress.get(address) ?? 0) + delta;
    if (count > 0) this.pendingByAddress.set(address, count);
    else this.pendingByAddress.delete(address);
  }
}

/** Whether one more socket may open, from the counts now. Pure. */
export function upgradeVerdict(
  limits: SocketLimits,
  counts: { readonly open: number; readonly pending: number; readonly pendingOfAddress: number },
): UpgradeVerdict {
  if (counts.open >= limits.maxSockets) {
    return {
      phase: "refused",
      status: 503,
      message: `TOO_MANY_CONNECTIONS: ${limits.maxSockets} WebSockets are open (RELEVO_API_MAX_WEBSOCKETS); retry later`,
    };
  }
  if (counts.pending >= limits.maxPending) {
    return {
      phase: "refused",
      status: 503,
      message: `TOO_MANY_CONNECTIONS: ${limits.maxPending} WebSockets have not sent an accepted connection_init yet; retry later`,
    };
  }
  if (counts.pendingOfAddress >= limits.maxPendingPerAddress) {
    return {
      phase: "refused",
      status: 429,
      message: `TOO_MANY_CONNECTIONS: ${limits.maxPendingPerAddress} WebSockets of this address have not sent connection_init yet`,
    };
  }
  return { phase: "admitted" };
}
