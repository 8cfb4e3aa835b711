import type Redis from "ioredis";

/**
 * What the failover side of Relevo records about the cluster, in Redis: the
 * primary it recognises (PostgreSQL says who is writable; this says who may
 * be), the nodes it fenced, and, in synchronous mode, which replicas every
 * commit waits for and which of them hold every acknowledged commit.
 */
export interface ClusterState {
  /** The recorded primary: any other writable node is a split brain and is fenced. */
  readonly primary: string;
  /** Bumped by every change of primary. */
  readonly epoch: number;
  /** Nodes fenced and not yet rejoined: never started as writers. */
  readonly fenced: readonly string[];
  /** synchronous_standby_names as last set on the primary (every commit waits for all of them). */
  readonly syncSet: readonly string[];
  /**
   * Replicas known to hold every acknowledged commit: in synchronous mode the
   * members of the sync set that caught up after joining it. Only these are
   * promoted automatically in synchronous mode.
   */
  readonly eligible: readonly string[];
  /** A replica added to the sync set becomes eligible once it has flushed this LSN (primary's LSN right after the change). */
  readonly joining: Readonly<Record<string, string>>;
  /**
   * Replicas a reseed destroyed and has not seeded again yet: the monitor
   * seeds them again (see lost-slot-rules.ts) until one succeeds, whichever
   * instance runs it. Absent in a state written before it existed.
   */
  readonly reseeding?: readonly string[];
  readonly updatedAt: string;
}

/**
 * Writes only while `guardKey` holds `guardValue` (the caller's lease or
 * operation lock, whose value carries its fencing token): a deposed leader's
 * late write is refused, not applied.
 */
const GUARDED_SET = `
if ARGV[1] ~= "" and redis.call("GET", KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[3] ~= "" and redis.call("EXISTS", KEYS[3]) == 1 then return 0 end
if ARGV[4] ~= "" then
  local current = redis.call("GET", KEYS[1])
  if current and tostring(cjson.decode(current).epoch) ~= ARGV[4] then return 0 end
end
redis.call("SET", KEYS[1], ARGV[2])
return 1`;

/** Further conditions of a write: the monitor's, which must not race an operation or a change of primary. */
export interface WriteConditions {
  /** Refused while this key exists (the operation lock: an operation owns the state meanwhile). */
  readonly unlessKey?: string;
  /** Refused unless the stored state still has this epoch (no change of primary since it was read). */
  readonly epoch?: number;
}

export interface StateGuard {
  readonly key: string;
  readonly value: string;
}

export class StaleWriterError extends Error {
  constructor(what: string) {
    super(`${what}: this instance no longer holds its lease; another took over`);
    this.name = "StaleWriterError";
  }
}

export class ClusterStateStore {
  constructor(
    private readonly redis: Redis,
    private readonly key: string,
  ) {}

  async read(): Promise<ClusterState | null> {
    const raw = await this.redis.get(this.key);
    return raw ? (JSON.parse(raw) as ClusterState) : null;
  }

  async clear(): Promise<void> {
    await this.redis.del(this.key);
  }

  /** Applies `change` to the current state and writes it under `guard`; throws StaleWriterError when the guard no longer holds. */
  async update(
    guard: StateGuard | null,
    change: (state: ClusterState | null) => ClusterState,
    conditions: WriteConditions = {},
  ): Promise<ClusterState> {
    const next = { ...change(await this.read()), updatedAt: new Date().toISOString() };
    const written = (await this.redis.eval(
      GUARDED_SET,
      3,
      this.key,
      guard?.key ?? this.key,
      conditions.unlessKey ?? this.key,
      guard?.value ?? "",
      JSON.stringify(next),
      conditions.unlessKey ? "1" : "",
      conditions.epoch === undefined ? "" : String(conditions.epoch),
    )) as number;
    if (written !== 1) throw new StaleWriterError("cluster state not written");
    return next;
  }
}

export function initialState(primary: string): ClusterState {
  return { primary, epoch: 1, fenced: [], syncSet: [], eligible: [], joining: {}, updatedAt: new Date().toISOString() };
}

export function without(list: readonly string[], name: string): string[] {
  return list.filter((item) => item !== name);
}

export function withName(list: readonly string[], name: string): string[] {
  return list.includes(name) ? [...list] : [...list, name].sort();
}
