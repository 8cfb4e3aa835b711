import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import type { WalArchiver } from "../wal/wal-archiver";
import { serverHistory } from "../postgres/timelines";
import { changesSince } from "../wal/wal-changes";
import type { WalSummarizer } from "../wal/wal-summary";
import type { BackupSession } from "./backup-session";
import type { SourceFacts, StartedBackup } from "./backup-start";
import type { ChangeSet } from "./change-plan";
import type { BackupManifest } from "./manifest";

export interface ReferenceChanges {
  /** The blocks the WAL since the reference touched; null when that WAL is not readable (the copy scans page LSNs then). */
  readonly changes: ChangeSet | null;
  readonly changesFrom: "wal" | "page-scan";
}

/**
 * What changed since the reference, for a differential or incremental: the
 * WAL up to the backup's own start is archived and summarised first (on a
 * standby, by switching segments on the primary).
 */
export async function findChangesSinceReference(options: {
  readonly session: BackupSession;
  readonly archiver: WalArchiver;
  readonly summarizer: WalSummarizer;
  readonly logger: Logger;
  readonly id: string;
  readonly reference: BackupManifest;
  readonly source: SourceFacts;
  readonly started: StartedBackup;
  readonly archiveTimeoutMs: number;
  readonly switchWalOnPrimary: () => Promise<void>;
}): Promise<ReferenceChanges> {
  const { session, logger, id, reference, source, started } = options;
  const timeline = (await session.client.query<{ timeline: number }>("SELECT timeline_id AS timeline FROM pg_control_checkpoint()"))
    .rows[0]!.timeline;
  if (source.inRecovery) await options.switchWalOnPrimary();
  else await session.client.query("SELECT pg_switch_wal()");
  await options.archiver.waitForArchived(timeline, started.startLsn, started.startLsn, options.archiveTimeoutMs);
  const walArchivedAtMs = Date.now();
  const found = await changesSince(
    options.summarizer,
    { timeline: reference.timeline, startLsn: reference.startLsn, stopLsn: reference.stopLsn! },
    {
      timeline,
      startLsn: started.startLsn,
      history: timeline === source.timeline ? source.history : await serverHistory(session.client, timeline),
    },
  );
  // Only when the timeline changed between the check above and the start (a promotion in between).
  if (found.kind === "other-history")
    throw new RelevoError(
      ErrorCode.PreconditionFailed,
      `the cluster changed history as the backup started (${found.reason}); take it again`,
    );
  if (found.kind === "unavailable")
    logger.warn({ id, reason: found.reason }, "the WAL since the reference is not readable: scanning page LSNs instead");
  const changes = found.kind === "changes" ? found.changes : null;
  const changesFrom = changes ? "wal" : "page-scan";
  logger.info(
    {
      id,
      reference: reference.id,
      changesFrom,
      segments: found.kind === "changes" ? found.segments : 0,
      walArchivedMs: walArchivedAtMs - started.checkpointedAtMs,
      summariesMs: Date.now() - walArchivedAtMs,
    },
    "changes since the reference found",
  );
  return { changes, changesFrom };
}
