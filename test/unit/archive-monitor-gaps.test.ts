import { expect } from "@jest/globals";
import path from "node:path";
import { Readable } from "node:stream";
import { createLogger } from "../../src/log";
import { archiveKey } from "../../src/repository/repository-layout";
import type { ArchiveGap, RecoveryWindow } from "../../src/restore/recovery-window";
import { Repository, walSpoolDir } from "../../src/storage/repository";
import { ArchiveMonitor } from "../../src/wal/archive-monitor";
import { gapField, type ArchiveGaps } from "../../src/wal/archive-gaps";
import type { BackupService } from "../../src/backup/backup-service";
import type { EventLog } from "../../src/events/event-log";
import { tempHome } from "../helpers/home";

/**
 * A segment missing from the archive's index while a pass still puts it
 * (parallel puts finish out of order) is not a gap: the monitor reports a
 * gap only once a head confirms its first segment absent, at two checks in
 * a row. The window is the index's (as recoveryWindow computes it from
 * archivedWalState); the archive is a real directory repository.
 */
const SEGMENT_4 = "000000010000000000000004";
const GAP: ArchiveGap = { timeline: 1, from: SEGMENT_4, to: SEGMENT_4 };

async function monitorHome(label: string) {
  const home = await tempHome(label);
  const repository = new Repository(path.join(home, "repository"), null, { spoolDir: walSpoolDir(home) });
  await repository.ensure();
  const reported: ArchiveGap[] = [];
  // The window as the index showed it when the check began: segment 4 missing between 3 and 5.
  const window: RecoveryWindow = { earliest: null, latest: null, gaps: [GAP] };
  const monitor = new ArchiveMonitor({
    backups: { recoveryWindow: () => Promise.resolve(window), list: () => Promise.resolve([]) } as unknown as BackupService,
    events: {} as EventLog,
    gaps: {
      report: (gap: ArchiveGap) => Promise.resolve(void reported.push(gap)),
      settle: () => Promise.resolve(),
    } as unknown as ArchiveGaps,
    archives: () => [{ index: 1, archive: repository.archive }],
    logger: createLogger({ level: "silent" }),
    topology: () => null,
    intervalMs: 60_000,
    maxLagBytes: 0,
  });
  return { repository, monitor, reported };
}

describe("the archive monitor's gaps", () => {
  test("a segment put after the index showed it missing (a push in flight) is never reported", async () => {
    const { repository, monitor, reported } = await monitorHome("monitor-in-flight");
    await monitor.check();
    // The put of segment 4 completes after the index was read.
    await repository.objects.putStream(archiveKey(0, SEGMENT_4), Readable.from([Buffer.from("four")]));
    await monitor.check();
    await monitor.check();
    expect(reported).toEqual([]);
  });

  test("a gap a head confirms at two checks in a row is reported", async () => {
    const { monitor, reported } = await monitorHome("monitor-gap");
    await monitor.check();
    expect(reported).toEqual([]);
    await monitor.check();
    expect(reported).toEqual([GAP]);
  });

  test("two repositories: a segment repository 2 lacks and repository 1 holds is repository 2's gap, named by its number", async () => {
    const home = await tempHome("monitor-two");
    const [first, second] = ["repository", "second"].map(
      (name) => new Repository(path.join(home, name), null, { spoolDir: walSpoolDir(home) }),
    ) as [Repository, Repository];
    await first.ensure();
    await second.ensure();
    await first.objects.putStream(archiveKey(0, SEGMENT_4), Readable.from([Buffer.from("four")]));
    // Each repository's window as recoveryWindow({ repository }) computes it; the union has no gap.
    const windows: Record<string, RecoveryWindow> = {
      union: { earliest: null, latest: null, gaps: [] },
      1: { earliest: null, latest: null, gaps: [] },
      2: { earliest: null, latest: null, gaps: [GAP] },
    };
    const reported: ArchiveGap[] = [];
    const monitor = new ArchiveMonitor({
      backups: {
        recoveryWindow: (options: { repository?: number } = {}) => Promise.resolve(windows[options.repository ?? "union"]!),
        list: () => Promise.resolve([]),
      } as unknown as BackupService,
      events: {} as EventLog,
      gaps: {
        report: (gap: ArchiveGap) => Promise.resolve(void reported.push(gap)),
        settle: () => Promise.resolve(),
      } as unknown as ArchiveGaps,
      archives: () => [
        { index: 1, archive: first.archive },
        { index: 2, archive: second.archive },
      ],
      logger: createLogger({ level: "silent" }),
      topology: () => null,
      intervalMs: 60_000,
      maxLagBytes: 0,
    });
    await monitor.check();
    await monitor.check();
    expect(reported).toEqual([{ ...GAP, repository: 2 }]);
    expect(gapField({ ...GAP, repository: 2 })).not.toBe(gapField(GAP));
  });
});
