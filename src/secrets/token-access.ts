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
      if (version === this.seen) return;
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
      for (const listener of this.listeners) listener();
    } catch (error) {
      if (this.key === "") throw error; // at start: no key, no API
      // Keep what was read last (a file being replaced); the next look tries again.
      this.options.logger.warn({ err: (error as Error).message }, "token registry not re-read; keeping the last one");
    }
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
