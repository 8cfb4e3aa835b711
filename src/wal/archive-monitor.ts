import { bytesBehind } from "../postgres/lsn";
import type { ClusterSnapshot } from "../cluster/topology";

import type { EventLog } from "../events/event-log";
import type { Logger } from "../log";
import type { BackupService } from "../backup/backup-service";
import { SEGMENT_SIZE } from "../postgres/wal-names";
import { gapField, type ArchiveGaps } from "./archive-gaps";
import type { ArchiveGap, RecoveryWindow } from "../restore/recovery-window";
import type { WalIndex } from "./wal-index";

export interface ArchiveMonitorOptions {
  readonly backups: BackupService;
  readonly events: EventLog;
  /** The gaps reported (shared with the archiver, which reports the hole a lost slot leaves, and through Redis with every instance). */
  readonly gaps: ArchiveGaps;
  /**
   * What each repository's archive holds, by number: a gap's first segment
   * is confirmed missing by a head before it is reported. With several,
   * each repository's gaps are watched on their own (a segment one lacks
   * and another holds is still a gap of the first: its copies and
   * restores cannot cross it).
   */
  readonly archives: () => readonly { readonly index: number; readonly archive: Pick<WalIndex, "missing"> }[];
  readonly logger: Logger;
  readonly topology: () => ClusterSnapshot | null;
  readonly intervalMs: number;
  /** How far (bytes) the archive may trail the primary's current LSN before it is an event. */
  readonly maxLagBytes: number;
}

/**
 * Watches the archive: a gap (a missing segment between archived ones) is a
 * critical `archive:gap` event, once per gap, once it is confirmed (see
 * confirmedGaps); an archive that trails the
 * primary by more than `maxLagBytes` is an `archive:lagging` warning, once
 * until it has caught up again. Not silent log lines.
 */
export class ArchiveMonitor {
  private timer: NodeJS.Timeout | null = null;
  private lagging = false;
  /** The gaps the previous check saw, confirmed by a head, by gapField: reported only when the next check sees them too. */
  private gapsSeen = new Set<string>();

  constructor(private readonly options: ArchiveMonitorOptions) {}

  start(): void {
    const tick = async (): Promise<void> => {
      await this.check().catch((error: Error) => this.options.logger.warn({ err: error.message }, "archive check failed"));
      if (this.timer !== null) this.timer = setTimeout(() => void tick(), this.options.intervalMs);
    };
    this.timer = setTimeout(() => void tick(), this.options.intervalMs);
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  async check(): Promise<void> {
    const window = await this.options.backups.recoveryWindow();
    for (const gap of await this.confirmedGaps(await this.gapsToWatch(window))) await this.options.gaps.report(gap, "");
    await this.options.gaps.settle(await this.options.backups.list());
    const snapshot = this.options.topology();
    const primary = snapshot?.nodes.find((node) => node.name === snapshot.primary);
    if (!primary?.currentLsn || !window.latest) return;
    const lagBytes = bytesBehind(primary.currentLsn, window.latest.lsn);
    // The segment being written is never complete: only what lies beyond it counts.
    const behind = lagBytes > this.options.maxLagBytes + SEGMENT_SIZE;
    if (behind && !this.lagging) {
      await this.options.events.emit({
        kind: "archive:lagging",
        severity: "warning",
        node: primary.name,
        message: `the WAL archive trails ${primary.name} by ${lagBytes} bytes`,
        data: { lagBytes },
      });
    }
    this.lagging = behind;
  }

  /**
   * The gaps to watch: the window's with one repository; with several,
   * each repository's own, named by its number.
   */
  private async gapsToWatch(window: RecoveryWindow): Promise<ArchiveGap[]> {
    const { backups } = this.options;
    const archives = this.options.archives();
    if (archives.length <= 1) return [...window.gaps];
    const gaps: ArchiveGap[] = [];
    for (const { index } of archives) {
      for (const gap of (await backups.recoveryWindow({ repository: index })).gaps) gaps.push({ ...gap, repository: index });
    }
    return gaps;
  }

  /**
   * Of the window's gaps, those that are gaps: a segment missing from the
   * index may be one a pass is still putting while it put a later one
   * (parallel puts finish out of order), or one another instance pushed
   * since the index's listing. So a gap counts once its first segment is
   * confirmed absent by a head, at this check and at the one before:
   * reported, it is critical and kept until a full backup.
   */
  private async confirmedGaps(gaps: readonly ArchiveGap[]): Promise<ArchiveGap[]> {
    const seenBefore = this.gapsSeen;
    const seenNow = new Set<string>();
    const confirmed: ArchiveGap[] = [];
    const archives = this.options.archives();
    for (const gap of gaps) {
      // Confirmed in the repository named, else (one repository) in the only one.
      const archive = (archives.find((member) => member.index === gap.repository) ?? archives[0]!).archive;
      if ((await archive.missing([gap.from])).length === 0) continue;
      const key = gapField(gap);
      seenNow.add(key);
      if (seenBefore.has(key)) confirmed.push(gap);
    }
    this.gapsSeen = seenNow;
    return confirmed;
  }
}
