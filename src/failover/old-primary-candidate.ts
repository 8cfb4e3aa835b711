import { ErrorCode, RelevoError } from "../errors";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import type { Logger } from "../log";
import { latestCheckpointTimeline, readControlData } from "../postgres/control-data";
import { markFenced, readFenceMarker, removeFenceMarker } from "../postgres/fence-marker";
import { editStoppedNodeConf, STANDBY_SIGNAL } from "../postgres/replication-config";
import { filesOfTimelinesFrom, historiesToCopy, timelineAfterPromotion } from "../postgres/timelines";
import { readEndOfWal } from "../postgres/wal-end";
import { historyFileName } from "../postgres/wal-names";
import { divergedFolder, type WalArchive } from "../storage/wal-archive";
import type { StoppedOldPrimary } from "./candidate";
import type { OperationContext } from "./operation-context";
import { leftAsStoppedOldPrimary, takeoverPreparedReason } from "./switchover-rules";

/**
 * Whether `node` is the old primary of a switchover or failback as that
 * operation left it: stopped, fenced by it, never started again as the
 * target's standby — or stopped while a failover was making it ready for
 * promotion (see leftAsStoppedOldPrimary). Its WAL ends with its shutdown
 * checkpoint, which the target received before its promotion.
 */
export async function leftStoppedBySwitchover(context: OperationContext, node: NodeRef): Promise<boolean> {
  const { driver } = context.deps;
  if ((await driver.state(node)).phase !== "stopped") return false;
  const marker = await readFenceMarker(driver, node);
  if (marker === null) return false;
  return leftAsStoppedOldPrimary(marker.reason, await readControlData(driver, node, { allowFailure: true }));
}

/**
 * The member left stopped by a switchover or failback (see
 * leftStoppedBySwitchover), other than `exclude`, as a failover candidate:
 * its position is the end of its WAL, read offline; with where the lost
 * new primary's WAL ends (see endOfLostPrimaryWal), what it lacks. Null
 * when there is none, or its WAL cannot be read.
 */
export async function stoppedOldPrimaryFacts(
  context: OperationContext,
  options: { readonly lost: NodeRef; readonly exclude: readonly string[] },
): Promise<StoppedOldPrimary | null> {
  const { deps } = context;
  for (const node of deps.membership.nodes) {
    if (options.exclude.includes(node.name) || !(await leftStoppedBySwitchover(context, node))) continue;
    const walEnd = await readEndOfWal(deps.driver, node, { timeoutMs: deps.config.nodeTimeoutMs * 10 }).catch(() => null);
    if (walEnd === null) return null;
    const timeline = latestCheckpointTimeline(await readControlData(deps.driver, node));
    return {
      facts: { node, inRecovery: false, readOnly: true, lsn: walEnd, timeline, receiver: null },
      lostPrimaryWalEnd: await endOfLostPrimaryWal(context, options.lost),
    };
  }
  return null;
}

/**
 * Where the lost new primary's WAL ends, read offline: the furthest it
 * wrote, what the stopped old primary lacks at most. Null when it cannot be
 * told: its storage is gone or unreadable, or its server still runs (its
 * WAL may still grow; once fenced, it is read again before the promotion).
 */
async function endOfLostPrimaryWal(context: OperationContext, lost: NodeRef): Promise<string | null> {
  const { deps } = context;
  if ((await deps.driver.state(lost)).phase === "running") return null;
  return readEndOfWal(deps.driver, lost, { timeoutMs: deps.config.nodeTimeoutMs * 10 }).catch(() => null);
}

/**
 * The stopped old primary made ready to be promoted like any replica:
 * started as a standby of nobody (standby.signal, no upstream) on its own
 * timeline (`recovery_target_timeline = 'current'`: it replays its own WAL
 * and waits), so that pg_promote gives it a new timeline and the recorded
 * state, the archive and the other nodes see a change of primary as after
 * any failover. Before that, the history files of the timelines the lost
 * new primary made are copied into its pg_wal: PostgreSQL picks one past
 * the newest history it finds, and without them it would pick the lost
 * primary's own timeline again — two different histories under one
 * number, the archive's WAL of one taken for the other's.
 *
 * The failover records its choice before this runs, and this runs again
 * when it is resumed: first the marker says the node is being prepared
 * (it stays fenced, and still known as the switchover's old primary should
 * the start fail or the instance die), and goes only once the node runs,
 * in recovery. Already running (a resumed run past the start), it is only
 * unmarked.
 */
export async function startToPromote(
  context: OperationContext,
  options: { readonly node: NodeRef; readonly lost: NodeRef; readonly failoverId: string },
): Promise<void> {
  const { deps } = context;
  const { driver } = deps;
  const { node, lost } = options;
  if ((await driver.state(node)).phase !== "running") {
    await markFenced(driver, node, takeoverPreparedReason(options.failoverId));
    const control = await readControlData(driver, node);
    const timeline = latestCheckpointTimeline(control) ?? 1;
    const walEnd = () => readEndOfWal(driver, node, { timeoutMs: deps.config.nodeTimeoutMs * 10 });
    await copyNewerHistories({ driver, logger: deps.logger, walEnd, archive: deps.archive }, { node, lost, timeline });
    await editStoppedNodeConf(driver, node, {
      primary_conninfo: null,
      primary_slot_name: null,
      recovery_target_timeline: "current",
      synchronous_standby_names: null,
    });
    await driver.writeFile(node, STANDBY_SIGNAL, "");
    await driver.start(node, { timeoutMs: deps.config.startTimeoutMs });
  }
  // Running as a standby, read-only still (default_transaction_read_only: promote() resets it): the marker may go.
  await removeFenceMarker(driver, node);
}

/**
 * The history files past `timeline` that the lost primary's pg_wal or the
 * archive holds, into `node`'s pg_wal (see historiesToCopy: an abandoned
 * branch's history may be only in the archive). When the lost primary's
 * storage cannot be read, the one history it is known to have made is
 * written in its place, under the number the node would pick otherwise: a
 * switchover's target branched off the old primary's timeline exactly where
 * the old primary's WAL ends (it received all of it, and nothing else).
 * That history is added to the archive too (`archive.addHistory`): when the
 * archive held histories past `timeline` already (the lost primary's own,
 * archived before it was lost, or an abandoned branch's), the one written
 * here takes a number above them, the node is promoted one above that, and
 * a number missing from the archive would end PostgreSQL's search for the
 * newest timeline there: every later restore to 'latest' from an older
 * backup would follow the branch below the hole and miss every commit made
 * since this promotion.
 * `walEnd` reads where `node`'s WAL ends (pg_waldump: read only when
 * needed). The archive's histories are read through its handle: one planted
 * there as a link is refused, never read (nor copied into `node`'s pg_wal).
 */
export async function copyNewerHistories(
  io: {
    readonly driver: NodeDriver;
    readonly logger: Logger;
    readonly walEnd: () => Promise<string | null>;
    readonly archive: Pick<WalArchive, "names" | "read" | "addHistory">;
  },
  options: { node: NodeRef; lost: NodeRef; timeline: number },
): Promise<void> {
  const { driver, logger } = io;
  const { node, lost, timeline } = options;
  const lostNode = (await driver.listFiles(lost, "pg_wal").catch(() => [])).map((entry) => entry.path);
  const archive = await archivedNames(io.archive);
  const copied: number[] = [];
  let fromLostNode = 0;
  for (const history of historiesToCopy({ own: timeline, lostNode, archive })) {
    const name = historyFileName(history.timeline);
    const content =
      history.from === "lost-node"
        ? await driver.readFile(lost, `pg_wal/${name}`).catch(() => null)
        : await io.archive.read(name).catch((error: Error) => {
            logger.error({ node: node.name, history: name, err: error.message }, "an archived timeline history is unreadable: not copied");
            return null;
          });
    if (content === null) continue;
    await driver.writeFile(node, `pg_wal/${name}`, content);
    copied.push(history.timeline);
    if (history.from === "lost-node") fromLostNode += 1;
  }
  if (fromLostNode > 0) return;
  const walEnd = await io.walEnd();
  if (walEnd === null) throw new RelevoError(ErrorCode.CommandFailed, `the end of ${node.name}'s WAL cannot be read: it is not promoted`);
  const own = timeline > 1 ? ((await driver.readFile(node, `pg_wal/${historyFileName(timeline)}`))?.toString("utf8") ?? "") : "";
  logger.warn({ node: node.name, lost: lost.name }, "the lost primary's timeline history is unreadable: written from the switch point");
  const presumed = timelineAfterPromotion(timeline, copied);
  const content = `${own}${timeline}\t${walEnd}\tpromotion of ${lost.name}\n`;
  // Not added (the repository unwritable): the node is promoted all the same — a cluster without a primary is
  // worse — and the archiver's own failures are reported; the hole is named here.
  const archived = await io.archive.addHistory(presumed, content).catch((error: Error) => error);
  if (archived instanceof Error)
    logger.error(
      { node: node.name, timeline: presumed, err: archived.message },
      "the written timeline history is not in the archive: restores to 'latest' from older backups stop below it",
    );
  await driver.writeFile(node, `pg_wal/${historyFileName(presumed)}`, content);
}

/**
 * The archive's file names (received and archived). One that cannot be
 * listed is an error, never "none": a stopped old primary is not prepared
 * nor promoted blind of the timelines the archive holds (the failover
 * fails past its point of no return and is resumed).
 */
export function archivedNames(archive: Pick<WalArchive, "names">): Promise<string[]> {
  return archive.names();
}

/**
 * What a stopped old primary's promotion is checked against, recorded in
 * the failover's journal before `pg_promote` (a JSON fact): the archive's
 * files of timelines above the one `node` is on (the timeline it gets is
 * above that), and the folder a set-aside of them goes to. Recorded once:
 * a resumed failover sets aside what the archive held before the
 * promotion, never the new branch received since.
 */
export async function reusedTimelineCheck(context: OperationContext, node: NodeRef): Promise<string> {
  const timeline = (await context.facts(node))?.timeline ?? null;
  if (timeline === null)
    throw new RelevoError(ErrorCode.CommandFailed, `${node.name}'s timeline cannot be read: it is not promoted blind of the archive`);
  const names = filesOfTimelinesFrom(await archivedNames(context.deps.archive), timeline + 1);
  return JSON.stringify({ names, folder: divergedFolder() });
}

/**
 * After the stopped old primary's promotion: its new timeline must be above
 * every timeline the archive held before it (see reusedTimelineCheck). It
 * is, unless a history was missing both from the lost primary and from the
 * archive (see copyNewerHistories). If not, the node stays the primary —
 * its data is what the cluster has, and fencing it would leave no primary —
 * but the archive's files of its timeline and above, a branch the cluster
 * no longer follows, are set aside under diverged/<time>/ (kept, never
 * replayed, as the archiver does with WAL off the primary's history): the
 * archive never holds two histories under one number. A critical
 * `archive:timeline-reused` says so.
 *
 * Run on every run of the failover until it records the promotion (a
 * resumed one included: `promotedNow` false), with the recorded names and
 * folder: a set-aside that failed partway (the store unavailable) is
 * finished, and what it set aside already is skipped (see
 * ArchivedWal.setAside). A resumed run leaves `.partial` files alone: by
 * then pg_receivewal may be writing the new branch's.
 */
export async function setAsideReusedTimelines(
  context: OperationContext,
  options: { readonly node: NodeRef; readonly timeline: number | null; readonly promotedNow: boolean; readonly check: string },
): Promise<void> {
  const { deps } = context;
  const { node, timeline } = options;
  if (timeline === null) return; // promote() saw it writable on no known timeline: nothing to compare
  const check = JSON.parse(options.check) as { readonly names: readonly string[]; readonly folder: readonly string[] };
  const files = filesOfTimelinesFrom(check.names, timeline).filter((name) => options.promotedNow || !name.endsWith(".partial"));
  if (files.length === 0) return;
  // Through handles: wal/ is the PostgreSQL user's, and a wal/diverged planted as a link is refused, never followed.
  const { path: setAside, moved } = await deps.archive.setAside(files, check.folder);
  if (!options.promotedNow && moved.length === 0) return; // reported by the run that promoted it
  deps.logger.error({ node: node.name, timeline, files: files.length, setAside }, "promoted onto a timeline the archive held: set aside");
  await deps.events.emit({
    kind: "archive:timeline-reused",
    severity: "critical",
    node: node.name,
    message: `${node.name} was promoted onto timeline ${timeline}, which the archive already held files of (or of a later one): a timeline history was missing; the archive's ${files.length} files of timeline ${timeline} and above moved to ${setAside}`,
    data: { timeline, files, setAside },
  });
}
