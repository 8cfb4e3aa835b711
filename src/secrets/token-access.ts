import { stat } from "node:fs/promises";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import { readSecrets, secretsFile } from "./secrets-store";
import { readTokenFacts, revokedIds, tokenRegistryFile } from "./token-registry";
import { readToken, tokenRefusal, type TokenIdentity } from "./tokens";

export type TokenCheck =
  { readonly phase: "accepted"; readonly identity: TokenIdentity } | { readonly phase: "refused"; readonly error: RelevoError };

export interface TokenAccessOptions {
  readonly home: string;
  readonly logger: Logger;
  /** How often the home's token registry and key are looked at for changes. */
  readonly pollMs?: number;
  /**
   * Looks in a row at which the key or the registry could not be read after
   * which every token is refused (3, i.e. some 3 s): a revocation that
   * cannot be read must not leave the revoked token accepted.
   */
  readonly failClosedAfterLooks?: number;
  readonly now?: () => number;
}

/**
 * Decides, on every request and every WebSocket operation, whether a bearer
 * token is accepted: signed with the home's current key, not expired, not
 * revoked. All in memory: the key and the revoked ids are read from the data
 * home (secrets.json, tokens.jsonl) at start and again whenever either file
 * changes (a stat each `pollMs`), so `relevo token revoke` and
 * `relevo token rotate-key` take effect within a second without a restart;
 * listeners hear of revocations and rotations to close open WebSockets.
 * Revocations fail closed: when either file stays unreadable for a few
 * looks, every token is refused (and open WebSockets closed) until it can be
 * read again.
 */
export class TokenAccess {
  /** Signature checks of recent tokens: an HMAC per request is measurable at 1000 req/s. Valid ones only, bounded. */
  private readonly memo = new Map<string, TokenIdentity>();
  private readonly listeners = new Set<() => void>();
  private revoked: ReadonlySet<string> = new Set();
  private key = "";
  private generation = 0;
  private seen = "";
  private timer: NodeJS.Timeout | null = null;
  private refreshing: Promise<void> | null = null;
  /** Looks in a row that could not read the key or the registry. */
  private failedLooks = 0;
  /** Set while every token is refused: the files stayed unreadable. */
  private unreadable: RelevoError | null = null;
  private readonly now: () => number;

  private constructor(private readonly options: TokenAccessOptions) {
    this.now = options.now ?? Date.now;
  }

  static async open(options: TokenAccessOptions): Promise<TokenAccess> {
    const access = new TokenAccess(options);
    await access.refresh();
    access.timer = setInterval(() => void access.refresh(), options.pollMs ?? 1000);
    access.timer.unref();
    return access;
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.listeners.clear();
  }

  /** The token as sent (without `Bearer `). */
  check(token: string): TokenCheck {
    if (this.unreadable) return { phase: "refused", error: this.unreadable };
    let identity = this.memo.get(token);
    if (!identity) {
      const reading = readToken(this.key, token);
      if (reading.phase === "legacy") {
        return refused(
          ErrorCode.Unauthenticated,
          "this token has no expiry (minted before tokens expired) and is no longer accepted: mint a new one with `relevo token`",
        );
      }
      if (reading.phase === "invalid") return refused(ErrorCode.Unauthenticated, "the bearer token is not valid for this Relevo data home");
      identity = reading.identity;
      if (this.memo.size >= 1000) this.memo.delete(this.memo.keys().next().value!);
      this.memo.set(token, identity);
    }
    return this.recheck(identity);
  }

  /** An identity accepted earlier (an open WebSocket's), checked again now. */
  recheck(identity: TokenIdentity): TokenCheck {
    if (this.unreadable) return { phase: "refused", error: this.unreadable };
    switch (tokenRefusal(identity, { now: this.now(), revoked: this.revoked })) {
      case "expired":
        return refused(
          ErrorCode.TokenExpired,
          `token ${identity.id} expired at ${new Date(identity.expiresAt).toISOString()}: mint a new one with \`relevo token\``,
        );
      case "revoked":
        return refused(ErrorCode.TokenRevoked, `token ${identity.id} was revoked`);
      case null:
        return { phase: "accepted", identity };
    }
  }

  /** The refusal of a token accepted before the key was replaced. */
  rotatedKeyRefusal(identity: TokenIdentity): RelevoError {
    return new RelevoError(ErrorCode.Unauthenticated, `the token key was replaced: token ${identity.id} is no longer valid`);
  }

  /**
   * Called after the revoked ids or the key changed (open WebSockets check
   * their identity again then). A rotated key does not change an identity
   * accepted before: those sockets are told through `keyGeneration`.
   */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Counts the key's replacements: a socket authenticated under another generation is closed. */
  get keyGeneration(): number {
    return this.generation;
  }

  /** Reads the key and the revocations again if either file changed since the last look. */
  async refresh(): Promise<void> {
    this.refreshing ??= this.reload().finally(() => (this.refreshing = null));
    return this.refreshing;
  }

  private async reload(): Promise<void> {
    try {
      const version = await fileVersions([secretsFile(this.options.home), tokenRegistryFile(this.options.home)]);
      if (version === this.seen) {
        if (this.readable()) this.notify();
        return;
      }
      const [secrets, facts] = await Promise.all([readSecrets(this.options.home), readTokenFacts(this.options.home)]);
      const keyChanged = this.key !== "" && secrets.tokenKey !== this.key;
      if (secrets.tokenKey !== this.key) {
        this.memo.clear();
        if (keyChanged) this.generation += 1;
      }
      this.key = secrets.tokenKey;
      this.revoked = revokedIds(facts);
      this.seen = version;
      if (keyChanged) this.options.logger.warn("the token key was rotated: every token minted before is refused");
      this.readable();
      this.notify();
    } catch (error) {
      if (this.key === "") throw error; // at start: no key, no API
      this.unreadableLook(error as Error);
    }
  }

  /** A look read both files (or found them unchanged): true when tokens were all refused until now. */
  private readable(): boolean {
    this.failedLooks = 0;
    if (!this.unreadable) return false;
    this.unreadable = null;
    this.options.logger.warn("the token key and registry are readable again: tokens are checked again");
    return true;
  }

  private notify(): void {
    for (const listener of this.listeners) listener();
  }

  /**
   * Keeps what was read last for a few looks (a file being replaced), then
   * refuses every token. Logged at the first failed look and when tokens
   * start being refused, not at every look.
   */
  private unreadableLook(error: Error): void {
    this.failedLooks += 1;
    const files = `${secretsFile(this.options.home)}, ${tokenRegistryFile(this.options.home)}`;
    if (this.failedLooks === 1) {
      this.options.logger.warn({ err: error.message, files }, "token key or registry not re-read; keeping the last one for now");
    }
    if (this.unreadable || this.failedLooks < (this.options.failClosedAfterLooks ?? 3)) return;
    // The reason stays in the service log: a client is told no path or error of this host.
    this.unreadable = new RelevoError(
      ErrorCode.Unauthenticated,
      "this Relevo service cannot read its token key or token registry (revocations), so it refuses every token until it can: see the service log",
    );
    this.options.logger.error(
      { err: error.message, files, looks: this.failedLooks },
      "token key or registry unreadable: every token is refused until they can be read (check their owner and mode)",
    );
    this.notify();
  }
}

function refused(code: ErrorCode, message: string): TokenCheck {
  return { phase: "refused", error: new RelevoError(code, message) };
}

/** Size, modification time and inode of each file (absent: "-"): what changes when it is appended to or replaced. */
async function fileVersions(files: readonly string[]): Promise<string> {
  const versions = await Promise.all(
    files.map(async (file) => {
      try {
        const info = await stat(file, { bigint: true });
        return `${info.ino}:${info.size}:${info.mtimeNs}`;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "ENOENT") return "-";
        throw error;
      }
    }),
  );
  return versions.join("|");
}
