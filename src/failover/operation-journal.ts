import type Redis from "ioredis";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import type { RedisKeys } from "../redis/keys";
import { laterInstant, leaseInstantNow, leaseLapsed, type LeaseInstant } from "../redis/redis-lease";
import { StaleWriterError, type StateGuard } from "./cluster-state";

export type OperationKind = "failover" | "switchover" | "failback" | "rejoin" | "add-replica" | "remove-replica" | "reseed";

/** What an operation needs to be run again by another instance: its parameters and how far it got. */
export interface JournalEntry {
  readonly id: string;
  readonly kind: OperationKind;
  readonly trigger: "automatic" | "manual";
  /** The primary when the operation began (failover, switchover) or the node rejoined (rejoin). */
  readonly from: string;
  /** The node to promote, once chosen (failover) or asked for (switchover, failback). */
  readonly to: string | null;
  readonly force: boolean;
  readonly reason: string;
  readonly stage: string;
  readonly startedAt: string;
  /** Stage times (ISO), for the Failover record. */
  readonly times: Readonly<Record<string, string>>;
  /** Facts gathered on the way (candidate LSNs, the old primary's last LSN...). */
  readonly facts: Readonly<Record<string, string | number | null>>;
}

/**
 * Sets the lock and the entry together, only when no operation holds the lock
 * and no entry is left (an abandoned one is adopted, never overwritten), and,
 * for an automatic operation, only while the monitor's lease is still held.
 */
const BEGIN = `
if redis.call("EXISTS", KEYS[2]) == 1 then return 0 end
if ARGV[4] ~= "" and redis.call("GET", KEYS[3]) ~= ARGV[4] then return 0 end
if redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
  redis.call("SET", KEYS[2], ARGV[3])
  return 1
end
return 0`;
/** Takes over an abandoned entry: the lock expired, the entry is still there. */
const ADOPT = `
if redis.call("EXISTS", KEYS[2]) == 1 and redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then return 1 end
return 0`;
const RENEW = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end`;
const WRITE = `if redis.call("GET", KEYS[1]) == ARGV[1] then redis.call("SET", KEYS[2], ARGV[2]) return 1 else return 0 end`;
const FINISH = `if redis.call("GET", KEYS[1]) == ARGV[1] then redis.call("DEL", KEYS[2]) redis.call("DEL", KEYS[1]) return 1 else return 0 end`;

/**
 * The one operation in flight on the cluster, journaled in Redis: a lock
 * (SET NX with a time to live, renewed by its runner) whose value carries a
 * fencing token, and the entry itself, written only while the lock holds that
 * value (compare-and-set in Lua). When the runner dies, the lock expires and
 * the failover leader adopts the entry and runs the operation again from its
 * journal; every step is idempotent, so a step done twice does no harm, and a
 * deposed runner's late write is refused.
 */
export class OperationJournal {
  private readonly lockKey: string;
  private readonly entryKey: string;
  private readonly tokenKey: string;

  constructor(
    private readonly redis: Redis,
    keys: RedisKeys["operation"],
    private readonly ttlMs: number,
    private readonly instance: string,
    private readonly logger: Logger,
  ) {
    this.lockKey = keys.lock;
    this.entryKey = keys.entry;
    this.tokenKey = keys.fencing;
  }

  /** The lock's key: present while an operation is in flight. */
  get lockName(): string {
    return this.lockKey;
  }

  /** Forgets any operation (a cluster initialised anew has none of the old one's). */
  async clear(): Promise<void> {
    await this.redis.del(this.entryKey, this.lockKey);
  }

  /** The operation in flight (any instance), or null. */
  async current(): Promise<JournalEntry | null> {
    const raw = await this.redis.get(this.entryKey);
    return raw ? (JSON.parse(raw) as JournalEntry) : null;
  }

  /**
   * Starts an operation; OPERATION_IN_PROGRESS when one is in flight. `lease`:
   * the monitor's, for an automatic operation, which a deposed monitor must
   * not start.
   */
  async begin(entry: JournalEntry, lease: StateGuard | null = null): Promise<RunningOperation> {
    const holder = await this.nextHolder();
    const sentAt = leaseInstantNow();
    const taken = (await this.redis.eval(
      BEGIN,
      3,
      this.lockKey,
      this.entryKey,
      lease?.key ?? this.lockKey,
      holder,
      String(this.ttlMs),
      JSON.stringify(entry),
      lease?.value ?? "",
    )) as number;
    if (taken !== 1) {
      if (lease && (await this.redis.get(lease.key)) !== lease.value) throw new StaleWriterError("operation not begun");
      throw operationInProgress(await this.current());
    }
    return new RunningOperation(this.redis, this.lockKey, this.entryKey, holder, this.ttlMs, entry, this.logger, sentAt);
  }

  /** Takes over an operation whose runner stopped renewing its lock; null when there is none (or another instance took it). */
  async adoptAbandoned(): Promise<RunningOperation | null> {
    const entry = await this.current();
    if (!entry) return null;
    const holder = await this.nextHolder();
    const sentAt = leaseInstantNow();
    const taken = (await this.redis.eval(ADOPT, 2, this.lockKey, this.entryKey, holder, String(this.ttlMs))) as number;
    if (taken !== 1) return null;
    const fresh = await this.current();
    if (!fresh) {
      await this.redis.eval(FINISH, 2, this.lockKey, this.entryKey, holder);
      return null;
    }
    return new RunningOperation(this.redis, this.lockKey, this.entryKey, holder, this.ttlMs, fresh, this.logger, sentAt);
  }

  private async nextHolder(): Promise<string> {
    return `${this.instance}#${await this.redis.incr(this.tokenKey)}`;
  }
}

/** An operation this instance runs: its journal entry, written under its lock. */
export class RunningOperation {
  private renewal: NodeJS.Timeout;
  private lost = false;
  private closed = false;

  constructor(
    private readonly redis: Redis,
    private readonly lockKey: string,
    private readonly entryKey: string,
    private readonly holder: string,
    private readonly ttlMs: number,
    private current: JournalEntry,
    private readonly logger: Logger,
    /** When the request that took the lock was sent: the lock is surely ours for a time to live from then. */
    private confirmedSentAt: LeaseInstant,
  ) {
    this.renewal = setInterval(
      () => {
        const sentAt = leaseInstantNow();
        (this.redis.eval(RENEW, 1, this.lockKey, this.holder, String(this.ttlMs)) as Promise<number>)
          .then((ours) => {
            if (ours !== 1) this.lost = true;
            else this.confirmedSentAt = laterInstant(this.confirmedSentAt, sentAt);
          })
          .catch((error: Error) => {
            // Unrenewed for a whole time to live, the lock may be another's by now.
            if (this.lapsed()) this.lost = true;
            this.logger.warn({ err: error.message }, "operation lock not renewed: Redis unavailable");
          });
      },
      Math.max(100, Math.floor(ttlMs / 3)),
    );
    this.renewal.unref();
  }

  get entry(): JournalEntry {
    return this.current;
  }

  /**
   * No renewal confirmed for a time to live on either clock (see
   * leaseLapsed): a wall clock stepped forward lapses the lock at once, as
   * Redis expires the key at once; one stepped back is still bounded by the
   * monotonic clock.
   */
  private lapsed(): boolean {
    return leaseLapsed({ confirmedSentAt: this.confirmedSentAt, now: leaseInstantNow(), ttlMs: this.ttlMs });
  }

  /** The lock, for writes to the cluster state made by this operation. */
  get guard(): StateGuard {
    return { key: this.lockKey, value: this.holder };
  }

  /** Finished or abandoned: nothing more is written. */
  get settled(): boolean {
    return this.closed;
  }

  /** Throws StaleWriterError when the lock may no longer be ours: checked before every step that changes a node. */
  assertHeld(): void {
    if (this.lost || this.lapsed()) {
      this.lost = true;
      throw new StaleWriterError("operation step not taken");
    }
  }

  /** Records progress; throws StaleWriterError when another instance took the operation over. */
  async record(change: Partial<Pick<JournalEntry, "stage" | "to" | "facts">>, stamp?: string): Promise<JournalEntry> {
    const next: JournalEntry = {
      ...this.current,
      ...change,
      facts: { ...this.current.facts, ...(change.facts ?? {}) },
      times: stamp ? { ...this.current.times, [stamp]: new Date().toISOString() } : this.current.times,
    };
    await this.write(next);
    return next;
  }

  /**
   * Writes a whole new entry under the same lock: the operation is handed
   * over to another one (a switchover whose new primary died, to the
   * failover that replaces it), with no moment where the journal is free.
   */
  async replace(entry: JournalEntry): Promise<void> {
    await this.write(entry);
  }

  private async write(entry: JournalEntry): Promise<void> {
    if (this.lost) throw new StaleWriterError("operation journal not written");
    const written = (await this.redis.eval(WRITE, 2, this.lockKey, this.entryKey, this.holder, JSON.stringify(entry))) as number;
    if (written !== 1) {
      this.lost = true;
      throw new StaleWriterError("operation journal not written");
    }
    this.current = entry;
  }

  /** Removes the entry and the lock (still ours only). */
  async finish(): Promise<void> {
    clearInterval(this.renewal);
    this.closed = true;
    await this.redis.eval(FINISH, 2, this.lockKey, this.entryKey, this.holder);
  }

  /** Stops renewing without finishing: the entry stays for another instance to adopt (the service is stopping). */
  abandon(): void {
    clearInterval(this.renewal);
    this.closed = true;
  }
}

/** OPERATION_IN_PROGRESS, naming the operation in flight when it is known. */
export function operationInProgress(running: JournalEntry | null): RelevoError {
  return new RelevoError(
    ErrorCode.OperationInProgress,
    running
      ? `${running.kind} ${running.id} (${running.from} → ${running.to ?? "?"}) is in progress, at stage ${running.stage}; wait for it to finish`
      : "another operation is in progress; wait for it to finish",
    { details: running ? { operation: running.id, kind: running.kind, stage: running.stage } : {} },
  );
}
