import { randomUUID } from "node:crypto";
import type Redis from "ioredis";
import type { Logger } from "../log";
import { monotonicNowMs } from "../util/monotonic-clock";

/** Extends the lease if it is still ours; 1 when it was. */
const RENEW = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end`;
/** Gives the lease up if it is still ours. */
const RELEASE = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end`;

export interface LeaseHolder {
  /** What holds it: `<instance>#<fencing token>`. */
  readonly holder: string;
  /** Increases with every acquisition: a later holder always has a larger one. */
  readonly fencingToken: number;
}

/**
 * A moment on both clocks a lease is measured by: this process's monotonic
 * clock (see monotonic-clock.ts) and the wall clock, by which Redis expires
 * a key (it stores the expiry as a Unix time).
 */
export interface LeaseInstant {
  readonly monotonicMs: number;
  readonly wallMs: number;
}

export function leaseInstantNow(): LeaseInstant {
  return { monotonicMs: monotonicNowMs(), wallMs: Date.now() };
}

/** The later of two sends Redis confirmed, by the monotonic clock (the wall clock may have stepped back in between). Pure. */
export function laterInstant(a: LeaseInstant, b: LeaseInstant): LeaseInstant {
  return b.monotonicMs > a.monotonicMs ? b : a;
}

/**
 * Whether a lease may have lapsed. Redis keeps the key for the time to live
 * from when it received the last acquisition or renewal, which is after this
 * process sent it: the lease is surely ours until a time to live after
 * `confirmedSentAt`, the sending of the last request Redis confirmed, and may
 * be another's from then on. Lapsed when EITHER clock says a time to live
 * passed: the monotonic one covers a wall clock stepped back (which would
 * keep the key in Redis for as long as the step, and a holder measuring on
 * the wall clock acting for that long after Redis became unreachable); the
 * wall clock covers one stepped forward, since Redis (on this host's clock)
 * then drops the key at once and another instance may take it. Pure.
 */
export function leaseLapsed(options: {
  readonly confirmedSentAt: LeaseInstant;
  readonly now: LeaseInstant;
  readonly ttlMs: number;
}): boolean {
  const { confirmedSentAt, now, ttlMs } = options;
  return now.monotonicMs - confirmedSentAt.monotonicMs >= ttlMs || now.wallMs - confirmedSentAt.wallMs >= ttlMs;
}

/**
 * One holder at a time across service instances: a Redis key set with NX and
 * a time to live, renewed by its holder every third of that (only while the
 * value is still its own: a Lua check-and-extend), released the same way.
 * Every acquisition takes a fencing token from a counter, so whatever a
 * holder writes can carry it and a deposed holder's late write be refused.
 */
export class RedisLease {
  private held: LeaseHolder | null = null;
  /** When the last acquisition or renewal Redis confirmed was sent. */
  private confirmedSentAt: LeaseInstant = { monotonicMs: 0, wallMs: 0 };

  constructor(
    private readonly redis: Redis,
    private readonly key: string,
    private readonly ttlMs: number,
    private readonly instance: string = randomUUID(),
  ) {}

  /** The lease while it is surely this instance's; null once it may have lapsed, even before keepAlive notices. */
  get current(): LeaseHolder | null {
    if (this.held && this.lapsed()) return null;
    return this.held;
  }

  /** Takes the lease if nobody holds it, this instance included; null (and nothing changed) when someone does. */
  async tryAcquire(): Promise<LeaseHolder | null> {
    if (this.held) return null;
    const fencingToken = await this.redis.incr(`${this.key}:fencing`);
    const holder = `${this.instance}#${fencingToken}`;
    const sentAt = leaseInstantNow();
    const taken = await this.redis.set(this.key, holder, "PX", this.ttlMs, "NX");
    if (taken !== "OK") return null;
    this.held = { holder, fencingToken };
    this.confirmedSentAt = sentAt;
    return this.held;
  }

  /** Extends the lease; false when it is no longer ours (expired, or taken by another). */
  async renew(): Promise<boolean> {
    if (!this.held) return false;
    const sentAt = leaseInstantNow();
    const extended = (await this.redis.eval(RENEW, 1, this.key, this.held.holder, String(this.ttlMs))) as number;
    if (extended !== 1) this.held = null;
    else this.confirmedSentAt = laterInstant(this.confirmedSentAt, sentAt);
    return extended === 1;
  }

  private lapsed(): boolean {
    return leaseLapsed({ confirmedSentAt: this.confirmedSentAt, now: leaseInstantNow(), ttlMs: this.ttlMs });
  }

  async release(): Promise<void> {
    const held = this.held;
    this.held = null;
    if (held) await this.redis.eval(RELEASE, 1, this.key, held.holder);
  }

  /** Who holds it now (any instance), or null. */
  async holder(): Promise<string | null> {
    return this.redis.get(this.key);
  }

  /**
   * Renews every third of the time to live until the returned function is
   * called; `onLost` (once, and renewals end) when another took it, or when
   * no renewal was confirmed for a whole time to live (Redis restarted, slow,
   * or reachable from other instances only): it may be another's by now, so
   * this instance steps down, whatever the wall clock says meanwhile.
   */
  keepAlive(logger: Logger, onLost: () => void): () => void {
    let timer: NodeJS.Timeout | undefined = undefined;
    let lost = false;
    const lose = (): void => {
      clearInterval(timer);
      // A renewal still pending when the lease lapsed answers later: told once.
      if (lost) return;
      lost = true;
      this.held = null;
      onLost();
    };
    timer = setInterval(
      () => {
        if (this.lapsed()) return lose();
        this.renew()
          .then((ours) => {
            if (!ours) lose();
          })
          .catch((error: Error) => {
            logger.warn({ key: this.key, err: error.message }, "lease not renewed: Redis unavailable");
            if (this.lapsed()) lose();
          });
      },
      Math.max(100, Math.floor(this.ttlMs / 3)),
    );
    timer.unref();
    return () => clearInterval(timer);
  }
}

/**
 * Runs a singleton (the WAL archiver) in whichever instance holds `lease`:
 * tries to take it every third of its time to live, starts the work when it
 * does, stops it when the lease is lost to another instance.
 */
export class LeaderRole {
  private timer: NodeJS.Timeout | null = null;
  private leading = false;
  private stopKeepAlive: (() => void) | null = null;
  private transition: Promise<void> = Promise.resolve();

  constructor(
    private readonly lease: RedisLease,
    private readonly role: { readonly name: string; start(): void; stop(): Promise<void> },
    private readonly ttlMs: number,
    private readonly logger: Logger,
  ) {}

  get isLeading(): boolean {
    return this.leading;
  }

  start(): void {
    const attempt = (): void => {
      if (this.leading) return;
      this.lease
        .tryAcquire()
        .then((held) => {
          if (!held || this.timer === null) return;
          this.leading = true;
          this.logger.info({ role: this.role.name, fencingToken: held.fencingToken }, "this instance runs the role");
          // After any stop still in progress: never two of the role in one process.
          this.transition = this.transition.then(() => {
            if (this.leading) this.role.start();
          });
          this.stopKeepAlive = this.lease.keepAlive(this.logger, () => {
            this.logger.warn({ role: this.role.name }, "lease lost to another instance: stepping down");
            this.stepDown();
          });
        })
        .catch((error: Error) => this.logger.warn({ role: this.role.name, err: error.message }, "lease not taken: Redis unavailable"));
    };
    this.timer = setInterval(attempt, Math.max(100, Math.floor(this.ttlMs / 3)));
    attempt();
  }

  /** Stops the role here and gives the lease up, so another instance takes over at once. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.stepDown();
    await this.transition;
    await this.lease.release().catch(() => undefined);
  }

  private stepDown(): void {
    this.stopKeepAlive?.();
    this.stopKeepAlive = null;
    if (!this.leading) return;
    this.leading = false;
    this.transition = this.transition.then(() => this.role.stop());
  }
}
