import { archiveKey, archivePrefix, walFileNameOf } from "../repository/repository-layout";
import type { RepositoryStore } from "../repository/repository-store";
import { parseSegmentName } from "../postgres/wal-names";

/** How old the index may grow before the next call rebuilds it from a listing (another instance's pushes, expiry elsewhere). */
export const WAL_INDEX_REBUILD_MS = 3 * 60_000;

export interface WalIndexOptions {
  readonly objects: RepositoryStore;
  readonly generation: number;
  readonly rebuildMs?: number;
  readonly now?: () => number;
}

/**
 * What a repository's WAL archive (`<gen>/archive/…`) holds, by WAL file
 * name, kept in memory: the pusher adds what it put, expiry removes what it
 * deleted, and a listing of the archive rebuilds it when it is first used and
 * every few minutes (WAL_INDEX_REBUILD_MS). Why: on object storage a listing
 * of the whole archive is thousands of requests' worth of keys; the archive
 * monitor checks every few seconds and a backup polls for its WAL several
 * times a second. Only `missing` confirms a name the index lacks by one
 * `head` before it is taken for absent (a push by another instance since
 * the listing), and keeps it once found; `names`, `segments` and `has`
 * answer from the index, and a name it holds is never checked again: a
 * deletion by another instance (expiry, a set-aside) shows at the next
 * rebuild.
 */
export class WalIndex {
  private held: Set<string> | null = null;
  private builtAt = 0;
  private building: Promise<Set<string>> | null = null;
  /** Names put (true) or deleted (false) while a listing was under way. */
  private readonly changedDuringBuild = new Map<string, boolean>();

  constructor(private readonly options: WalIndexOptions) {}

  /** Every WAL file name archived (segments and histories), sorted. */
  async names(): Promise<string[]> {
    return [...(await this.current())].sort();
  }

  /** Complete archived segments, as timeline → segment numbers. */
  async segments(): Promise<Map<number, Set<number>>> {
    const result = new Map<number, Set<number>>();
    for (const name of await this.current()) {
      const parsed = parseSegmentName(name);
      if (!parsed) continue;
      if (!result.has(parsed.timeline)) result.set(parsed.timeline, new Set());
      result.get(parsed.timeline)!.add(parsed.segment);
    }
    return result;
  }

  /** Those of `names` the archive lacks: the index first, then one head per name it does not know. */
  async missing(names: readonly string[]): Promise<string[]> {
    const held = await this.current();
    const missing: string[] = [];
    for (const name of names) {
      if (held.has(name)) continue;
      if (await this.options.objects.exists(archiveKey(this.options.generation, name))) held.add(name);
      else missing.push(name);
    }
    return missing;
  }

  /** Whether `name` is known to be archived (no request). */
  async has(name: string): Promise<boolean> {
    return (await this.current()).has(name);
  }

  /** Records a completed put of `name`. */
  added(name: string): void {
    this.held?.add(name);
    if (this.building) this.changedDuringBuild.set(name, true);
  }

  /** Records a deletion of `name` (expiry, a set-aside). */
  removed(name: string): void {
    this.held?.delete(name);
    if (this.building) this.changedDuringBuild.set(name, false);
  }

  /** Rebuilds from a listing now (the pusher's start). */
  async rebuild(): Promise<void> {
    this.held = null;
    await this.current();
  }

  private async current(): Promise<Set<string>> {
    const now = this.options.now?.() ?? Date.now();
    if (this.held && now - this.builtAt < (this.options.rebuildMs ?? WAL_INDEX_REBUILD_MS)) return this.held;
    this.building ??= this.list().finally(() => (this.building = null));
    const listed = await this.building;
    // Put or deleted while the listing ran: the listing may have been taken before either.
    for (const [name, present] of this.changedDuringBuild) {
      if (present) listed.add(name);
      else listed.delete(name);
    }
    this.changedDuringBuild.clear();
    this.held = listed;
    this.builtAt = now;
    return listed;
  }

  private async list(): Promise<Set<string>> {
    const { objects, generation } = this.options;
    const names = new Set<string>();
    for (const info of await objects.list(archivePrefix(generation))) {
      const name = walFileNameOf(generation, info.key);
      if (name) names.add(name);
    }
    return names;
  }
}
