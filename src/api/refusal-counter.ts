import type { EventLog } from "../events/event-log";
import type { TokenIdentity } from "../secrets/tokens";

interface Window {
  readonly identity: Pick<TokenIdentity, "id" | "role">;
  readonly openedAt: number;
  /** Refusals after the first (which was reported when the window opened). */
  count: number;
  readonly codes: Set<string>;
  readonly timer: NodeJS.Timeout;
}

/**
 * Refused requests, counted per token rather than recorded one by one: the
 * first refusal of a token opens a window and is reported at once (an
 * `api:refused` event: someone is trying), the ones after it in the window
 * are only counted and reported in one `api:refused` event when the window
 * closes. So a token costs the stream at most two events per window however
 * many requests it sends, and the counts are exact.
 */
export class RefusalCounter {
  private readonly windows = new Map<string, Window>();

  constructor(
    private readonly events: Pick<EventLog, "emit">,
    private readonly windowMs: number,
  ) {}

  count(identity: Pick<TokenIdentity, "id" | "role">, codes: readonly string[]): void {
    const open = this.windows.get(identity.id);
    if (open) {
      open.count += 1;
      for (const code of codes) open.codes.add(code);
      return;
    }
    const timer = setTimeout(() => void this.close(identity.id), this.windowMs);
    timer.unref();
    this.windows.set(identity.id, { identity, openedAt: Date.now(), count: 0, codes: new Set(codes), timer });
    void this.report(identity, { count: 1, codes: [...codes].sort(), first: true });
  }

  /** Reports every open window now (at stop). */
  async flush(): Promise<void> {
    await Promise.all([...this.windows.keys()].map((id) => this.close(id)));
  }

  private async close(id: string): Promise<void> {
    const window = this.windows.get(id);
    if (!window) return;
    clearTimeout(window.timer);
    this.windows.delete(id);
    if (window.count > 0) await this.report(window.identity, { count: window.count, codes: [...window.codes].sort(), first: false });
  }

  private async report(
    identity: Pick<TokenIdentity, "id" | "role">,
    refused: { count: number; codes: string[]; first: boolean },
  ): Promise<void> {
    const what = refused.first ? "a request refused" : `${refused.count} more requests refused in ${Math.round(this.windowMs / 1000)} s`;
    await this.events.emit({
      kind: "api:refused",
      severity: "warning",
      node: null,
      message: `${identity.role} ${identity.id}: ${what} (${refused.codes.join(", ")})`,
      data: { count: refused.count, codes: refused.codes, first: refused.first, windowMs: this.windowMs },
      actor: { id: identity.id, role: identity.role },
    });
  }
}
