import type { ClusterSnapshot } from "../cluster/topology";
import { lsnToNumber } from "../postgres/lsn";
import { segmentNumber } from "../postgres/wal-names";

/**
 * What the monitor does about a replica whose slot on the primary PostgreSQL
 * invalidated (`wal_status = 'lost'`: it held back more than
 * max_slot_wal_keep_size, and the primary removed the WAL the replica
 * needs). Pure: the monitor reads the snapshot and the archive, and acts.
 *
 * What PostgreSQL 15 does meanwhile: the replica runs, read-only, and its WAL
 * receiver fails for ever ("requested WAL segment … has already been
 * removed"); it never catches up. With a restore_command that finds the
 * missing WAL in the archive it does catch up: it replays the archive, then
 * streams over the lost slot from where the archive ends, which the primary
 * still has, and the slot is reserved again. Replicas seeded by
 * pg_basebackup have no restore_command, so:
 *
 * - `bridge`: the archive holds every segment from the one the replica
 *   needs next up to the archiver's position (its slot's restart_lsn, from
 *   which the primary keeps WAL for it): the replica is given the archive
 *   as its restore_command, and catches up by itself. Nothing is destroyed.
 * - `reseed`: the archive cannot bridge it (a gap, or its own slot lost
 *   too), or the bridge does not carry it (see bridgeGivenUp): it is seeded
 *   again from scratch.
 * - `unrecord`: a member the state records as destroyed and not seeded yet
 *   (`reseeding`) streams from the primary over its slot: something else
 *   made it again (bootstrap's seed at `relevo up`, a resumed rejoin whose
 *   pg_rewind worked). Only the record is wrong: it is dropped from it,
 *   and the healthy replica is not destroyed and copied a second time.
 */
export type SlotRepair =
  | { readonly action: "bridge"; readonly node: string; readonly slot: string; readonly reason: string }
  | { readonly action: "reseed"; readonly node: string; readonly slot: string; readonly reason: string }
  | { readonly action: "unrecord"; readonly node: string; readonly slot: string; readonly reason: string };

/**
 * A bridged replica whose replay has not advanced for this long is reseeded:
 * restore_command found nothing more it could replay.
 */
export const BRIDGE_STALL_MS = 30000;
/**
 * However it advances, a bridge that has not brought the replica back to
 * streaming after this long is given up: the replica replays the archive
 * more slowly than the primary writes, and would never catch up. A slot is
 * lost only past max_slot_wal_keep_size (4GB by default), so a bridge
 * replays gigabytes, one `cp` per segment: minutes, not seconds.
 */
export const BRIDGE_CAP_MS = 2 * 60 * 60 * 1000;

/** A bridged replica's way through the archive, as the monitor has seen it. */
export interface Bridge {
  /** When it was given the archive (ms): once ALTER SYSTEM and pg_reload_conf() returned. */
  readonly since: number;
  /** The furthest replay position seen (null: none known yet). */
  readonly replayedLsn: string | null;
  /** When that position was first seen (ms): the replica's last progress. */
  readonly progressAt: number;
}

export function bridgeBegun(replayedLsn: string | null, now: number): Bridge {
  return { since: now, replayedLsn, progressAt: now };
}

/** The bridge after one more look at the replica's replay position: progress only when it moved forward. */
export function bridgeSeen(bridge: Bridge, replayedLsn: string | null, now: number): Bridge {
  if (replayedLsn === null) return bridge;
  if (bridge.replayedLsn !== null && lsnToNumber(replayedLsn) <= lsnToNumber(bridge.replayedLsn)) return bridge;
  return { ...bridge, replayedLsn, progressAt: now };
}

/**
 * The bridged replicas whose bridge ends (its feed stopped, its record
 * dropped): one that streams again; and one the archive no longer has to
 * carry or cannot reach, i.e. no longer a member (removed), absent from the
 * snapshot, or whose slot on the primary is not lost any more (streamed
 * from again, dropped, or another primary). Its feeder would otherwise run
 * on for good, listing the archive every second. Pure.
 */
export function bridgesEnded(inputs: {
  readonly bridged: Iterable<string>;
  readonly members: readonly string[];
  readonly snapshot: ClusterSnapshot;
  readonly primary: string;
  readonly slotOf: (name: string) => string;
}): string[] {
  const primary = inputs.snapshot.nodes.find((node) => node.name === inputs.primary);
  return [...inputs.bridged].filter((name) => {
    const seen = inputs.snapshot.nodes.find((node) => node.name === name);
    if (!inputs.members.includes(name) || !seen || seen.replication?.state === "streaming") return true;
    return !primary?.slots.some((slot) => slot.name === inputs.slotOf(name) && slot.walStatus === "lost");
  });
}

/** Why a bridge is given up (its replica to be reseeded), or null while it still carries the replica. */
export function bridgeGivenUp(bridge: Bridge, now: number): string | null {
  if (now - bridge.progressAt >= BRIDGE_STALL_MS)
    return `replaying the archive has not advanced it for ${Math.round((now - bridge.progressAt) / 1000)} s`;
  if (now - bridge.since >= BRIDGE_CAP_MS)
    return `replaying the archive has not brought it back to streaming in ${Math.round((now - bridge.since) / 60000)} min`;
  return null;
}

export interface LostSlotInputs {
  readonly snapshot: ClusterSnapshot;
  /** The recorded primary: nothing is done unless the snapshot shows the same one. */
  readonly recordedPrimary: string;
  /** Fenced nodes are the rejoin's, not this repair's. */
  readonly fenced: readonly string[];
  /** The slot each replica streams over on the primary. */
  readonly slotOf: (node: string) => string;
  /** The archiver's slot on the primary. */
  readonly archiveSlot: string;
  /** Segment numbers the archive holds complete (any timeline). */
  readonly archivedSegments: ReadonlySet<number>;
  /**
   * Replicas a reseed destroyed and did not seed again (the recorded
   * state's): seeded again unless the snapshot shows them streaming from
   * the primary (see remadeElsewhere).
   */
  readonly reseeding: readonly string[];
  /** Each replica bridged and not streaming yet, with its progress so far. */
  readonly bridges: ReadonlyMap<string, Bridge>;
  readonly now: number;
}

/**
 * The repairs due: for every replica a reseed left destroyed, a reseed, or
 * the record dropped if it streams again; and one repair per running
 * replica that does not stream and whose slot on the primary is lost.
 * Never the primary, never a fenced node, never on a snapshot that names
 * another primary than the record.
 */
export function lostSlotRepairs(inputs: LostSlotInputs): SlotRepair[] {
  const { snapshot } = inputs;
  if (snapshot.primary !== inputs.recordedPrimary) return [];
  const primary = snapshot.nodes.find((node) => node.name === snapshot.primary);
  if (!primary?.reachable) return [];
  const lost = new Set(primary.slots.filter((slot) => slot.walStatus === "lost").map((slot) => slot.name));
  const archiver = primary.slots.find((slot) => slot.name === inputs.archiveSlot && slot.walStatus !== "lost");
  const repairs: SlotRepair[] = inputs.reseeding
    .filter((name) => name !== primary.name)
    .map((name) => {
      const slot = inputs.slotOf(name);
      return remadeElsewhere(snapshot, name, slot)
        ? { action: "unrecord", node: name, slot, reason: `it streams from ${primary.name} over ${slot}: made again since` }
        : { action: "reseed", node: name, slot, reason: "a reseed destroyed it and did not seed it again" };
    });
  for (const node of snapshot.nodes) {
    if (node.name === primary.name || inputs.fenced.includes(node.name) || inputs.reseeding.includes(node.name)) continue;
    if (!node.reachable || node.role !== "replica" || node.replication?.state === "streaming") continue;
    const slot = inputs.slotOf(node.name);
    if (!lost.has(slot)) continue;
    const why = `its slot ${slot} on ${primary.name} was invalidated (more WAL held back than max_slot_wal_keep_size)`;
    const bridge = inputs.bridges.get(node.name);
    if (bridge !== undefined) {
      const givenUp = bridgeGivenUp(bridge, inputs.now);
      if (givenUp === null) continue; // the archive still carries it
      repairs.push({ action: "reseed", node: node.name, slot, reason: `${why}, and ${givenUp}` });
    } else if (archiveBridges(inputs.archivedSegments, node.replayedLsn, archiver?.restartLsn ?? null)) {
      repairs.push({ action: "bridge", node: node.name, slot, reason: `${why}; the archive holds the WAL it needs` });
    } else {
      repairs.push({ action: "reseed", node: node.name, slot, reason: `${why}, and the archive does not hold the WAL it needs` });
    }
  }
  return repairs;
}

/**
 * Whether a member recorded as destroyed is in fact a working replica of
 * the snapshot's primary: it answers as a replica, streams from that
 * primary, and its slot there is present, in use and not lost. Anything
 * less (no answer, not streaming, another slot) leaves it to be seeded
 * again: a member half made by a failed seed must not be taken for a done
 * one.
 */
export function remadeElsewhere(snapshot: ClusterSnapshot, name: string, slot: string): boolean {
  const node = snapshot.nodes.find((member) => member.name === name);
  const primary = snapshot.nodes.find((member) => member.name === snapshot.primary);
  if (!node?.reachable || node.role !== "replica" || primary === undefined) return false;
  if (node.replication?.state !== "streaming" || node.replication.upstream !== primary.name) return false;
  // Active: a walsender consumes it now, so the stream the replica reports is this primary's, over this slot.
  return primary.slots.some((held) => held.name === slot && held.active && held.walStatus !== "lost");
}

/**
 * Whether the archive holds, complete, every segment from the one
 * `replayedLsn` lies in up to the one before the archiver's slot's
 * `restart_lsn`: from there on the primary keeps the WAL (for the
 * archiver), so the replica streams on once it has replayed the archive.
 * Not when either position is unknown (no archiver slot, or a lost one).
 */
export function archiveBridges(archived: ReadonlySet<number>, replayedLsn: string | null, archiverRestartLsn: string | null): boolean {
  if (replayedLsn === null || archiverRestartLsn === null) return false;
  const kept = segmentNumber(archiverRestartLsn);
  for (let segment = segmentNumber(replayedLsn); segment < kept; segment += 1) if (!archived.has(segment)) return false;
  return true;
}
