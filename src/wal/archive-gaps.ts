import type { BackupManifest } from "../backup/manifest";
import type { EventLog } from "../events/event-log";
import { parseSegmentName, segmentNumber } from "../postgres/wal-names";
import type { ArchiveGap } from "../restore/recovery-window";

/**
 * The archive's gaps this instance knows of: each reported once as a
 * critical `archive:gap` event — whether the archiver found its slot lost
 * (at once, before the segments past the hole are archived) or the archive
 * monitor found a missing segment between archived ones (the same gap, seen
 * later, is not reported again) — and named in the cluster's health until a
 * full backup has started past it.
 */
export class ArchiveGaps {
  private readonly known = new Map<string, ArchiveGap>();

  constructor(private readonly events: EventLog) {}

  /** Emits `archive:gap` unless this gap was reported already. */
  async report(gap: ArchiveGap, cause: string): Promise<void> {
    const key = `${gap.timeline}:${gap.from}:${gap.to}`;
    if (this.known.has(key)) return;
    this.known.set(key, gap);
    await this.events.emit({
      kind: "archive:gap",
      severity: "critical",
      node: null,
      message: `the WAL archive misses ${gap.from}${gap.to !== gap.from ? ` to ${gap.to}` : ""} (timeline ${gap.timeline}${cause ? `, ${cause}` : ""}): point-in-time recovery cannot cross it; take a full backup`,
      data: { timeline: gap.timeline, from: gap.from, to: gap.to },
    });
  }

  /** Forgets the gaps a completed full backup started past: the newest state is restorable without crossing them. */
  settle(manifests: readonly BackupManifest[]): void {
    const open = openGaps([...this.known.values()], manifests);
    for (const [key, gap] of this.known) if (!open.includes(gap)) this.known.delete(key);
  }

  /** The cluster's health reasons: one per gap not yet behind a full backup. */
  healthReasons(): string[] {
    return [...this.known.values()].map(
      (gap) =>
        `the WAL archive has a gap (${gap.from}${gap.to !== gap.from ? ` to ${gap.to}` : ""}): point-in-time recovery cannot cross it; take a full backup`,
    );
  }
}

/**
 * The gaps no completed full backup has started past. A restore replays WAL
 * from its backup's start: one that starts after a gap never crosses it, so
 * from then on the gap only costs points in time before that backup. (A
 * differential or incremental is not enough: its changes since its reference
 * are read from the WAL summaries the gap lacks.) Pure.
 */
export function openGaps(gaps: readonly ArchiveGap[], manifests: readonly BackupManifest[]): ArchiveGap[] {
  const fullStarts = manifests.filter((m) => m.status === "completed" && m.type === "full").map((m) => segmentNumber(m.startLsn));
  return gaps.filter((gap) => {
    const last = parseSegmentName(gap.to)?.segment ?? Number.POSITIVE_INFINITY;
    return !fullStarts.some((start) => start > last);
  });
}
