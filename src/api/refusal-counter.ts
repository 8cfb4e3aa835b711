import type { EventLog } from "../events/event-log";
import type { TokenIdentity } from "../secrets/tokens";

/**
 * Who a refused request is counted against: the token it came with when that
 * token was accepted (a viewer's mutation, a query over the limits), or else
 * the address it came from (no token, a forged, expired or revoked one, a
 * rate-limited address) — a refusal before any token is accepted has no
 * other name, and a token the request names but that was refused is the
 * requester's claim, not a fact.
 */
export type RefusedParty =
  | { readonly kind: "token"; readonly identity: Pick<TokenIdentity, "id" | "role"> }
  | { readonly kind: "address"; readonly address: string };

/**
 * Parties counted by name in a window, per kind. Tokens are scarce (each
 * is minted by an operator); addresses are anyone's to vary (all of
 * 127.0.0.0/8 for a local user, every IPv6 address of a /64), so few are
 * named (review 14: a bound of 1000 let a client without a token write
 * 2000 events a minute). Past its kind's bound, a party's refusals share
 * one window, reported as "others". The counts stay exact; only the names
 * past the bound are lost.
 */
export const MAX_NAMED_PARTIES = { tokens: 1000, addresses: 20 } as const;

type Counted = RefusedParty | { readonly kind: "others" };

interface Window {
  readonly party: Counted;
  /** Refusals not reported yet (the first of a party is reported when its window opens). */
  count: number;
  readonly codes: Set<string>;
  readonly timer: NodeJS.Timeout;
}

const OTHERS_KEY = "others";

/**
 * Refused requests, counted per party rather than recorded one by one: the
 * first refusal of a party opens a window and is reported at once (an
 * `api:refused` event: someone is trying), the ones after it in the window
 * are only counted and reported in one `api:refused` event when the window
 * closes. So a party costs the stream at most two events per window however
 * many requests it sends, the whole counter at most two per window for each
 * party named (MAX_NAMED_PARTIES) plus two for the others, and the counts
 * are exact.
 */
export class RefusalCounter {
  private readonly windows = new Map<string, Window>();
  private readonly named = { token: 0, address: 0 };

  constructor(
    private readonly events: Pick<EventLog, "emit">,
    private readonly windowMs: number,
    private readonly bounds: { readonly tokens: number; readonly addresses: number } = MAX_NAMED_PARTIES,
  ) {}

  count(party: RefusedParty, codes: readonly string[]): void {
    const own = this.windows.get(partyKey(party));
    if (own) return add(own, codes);
    const bound = party.kind === "token" ? this.bounds.tokens : this.bounds.addresses;
    if (this.named[party.kind] < bound) return this.open(party, codes);
    const others = this.windows.get(OTHERS_KEY);
    if (others) return add(others, codes);
    this.open({ kind: "others" }, codes);
  }

  private open(party: Counted, codes: readonly string[]): void {
    const key = partyKey(party);
    const timer = setTimeout(() => void this.close(key), this.windowMs);
    timer.unref();
    if (party.kind !== "others") this.named[party.kind] += 1;
    this.windows.set(key, { party, count: 0, codes: new Set(codes), timer });
    void this.report(party, { count: 1, codes: [...codes].sort(), first: true });
  }

  /** Reports every open window now (at stop). */
  async flush(): Promise<void> {
    await Promise.all([...this.windows.keys()].map((key) => this.close(key)));
  }

  private async close(key: string): Promise<void> {
    const window = this.windows.get(key);
    if (!window) return;
    clearTimeout(window.timer);
    this.windows.delete(key);
    if (window.party.kind !== "others") this.named[window.party.kind] -= 1;
    if (window.count > 0) await this.report(window.party, { count: window.count, codes: [...window.codes].sort(), first: false });
  }

  private async report(party: Counted, refused: { count: number; codes: string[]; first: boolean }): Promise<void> {
    const seconds = Math.round(this.windowMs / 1000);
    const what = refused.first ? "a request refused" : `${refused.count} more requests refused in ${seconds} s`;
    const codes = refused.codes.join(", ");
    const data = { count: refused.count, codes: refused.codes, first: refused.first, windowMs: this.windowMs };
    const common = { kind: "api:refused" as const, severity: "warning" as const, node: null };
    switch (party.kind) {
      case "token":
        await this.events.emit({
          ...common,
          message: `${party.identity.role} ${party.identity.id}: ${what} (${codes})`,
          data,
          actor: { id: party.identity.id, role: party.identity.role },
        });
        return;
      case "address":
        await this.events.emit({
          ...common,
          message: `address ${party.address}, no accepted token: ${what} (${codes})`,
          data: { ...data, address: party.address },
        });
        return;
      case "others": {
        const count = refused.first ? "a request" : `${refused.count} more requests`;
        await this.events.emit({
          ...common,
          message: `${count} refused from tokens or addresses beyond the ${this.bounds.tokens} and ${this.bounds.addresses} counted by name in ${seconds} s (${codes})`,
          data: { ...data, others: true },
        });
        return;
      }
    }
  }
}

function add(window: Window, codes: readonly string[]): void {
  window.count += 1;
  for (const code of codes) window.codes.add(code);
}

function partyKey(party: Counted): string {
  switch (party.kind) {
    case "token":
      return `token:${party.identity.id}`;
    case "address":
      return `address:${party.address}`;
    case "others":
      return OTHERS_KEY;
  }
}
