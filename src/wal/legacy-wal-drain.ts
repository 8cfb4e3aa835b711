import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import { parseSegmentName } from "../postgres/wal-names";
import { divergedKey } from "../repository/repository-layout";
import type { DataKey } from "../repository/object-codec";
import type { RepositoryStore } from "../repository/repository-store";
import { divergedFolder, type WalArchive } from "../storage/wal-archive";
import { receiveStart } from "./receive-start";
import type { WalIndex } from "./wal-index";
import { putWalFile } from "./wal-pusher";

const HISTORY = /^[0-9A-F]{8}\.history$/;
const PARTIAL = /^([0-9A-F]{24})\.partial$/;
/** A `diverged/<time>` folder name as divergedFolder makes them (and a set-aside key accepts). */
const FOLDER = /^[0-9A-Za-z-]+$/;
/** The suffix of a `.partial` being copied into the spool: published by a rename once whole. */
const COPYING = ".relevo-drain";

/** What a drain does with each entry of a legacy `wal/`. */
export interface LegacyDrainPlan {
  /** Histories and complete segments: put into the archive (idempotent), then removed. */
  readonly push: string[];
  /** The `.partial` pg_receivewal would resume from: moved to the spool (which has nothing of its segment). */
  readonly toSpool: string[];
  /** Every other `.partial` (superseded, or of a segment the spool has): kept as `diverged/<time>/` objects, then removed. */
  readonly aside: string[];
}

/**
 * What to do with a legacy `wal/` holding `legacy`, beside a spool holding
 * `spool` and an archive holding `archived`. Histories first, then
 * segments oldest first (the archive grows without holes). A `.partial`
 * goes to the spool only when it is where streaming resumes over all of
 * them (the newest segment, no complete file of it anywhere) and the
 * spool has no file of that segment: an older one moved there would make
 * pg_receivewal restart before the archive's end, where the primary may
 * have removed the WAL already. Pure.
 */
export function legacyDrainPlan(legacy: readonly string[], spool: readonly string[], archived: readonly string[]): LegacyDrainPlan {
  const histories = legacy.filter((name) => HISTORY.test(name)).sort();
  const segments = legacy
    .filter((name) => parseSegmentName(name) !== null)
    .sort((a, b) => parseSegmentName(a)!.segment - parseSegmentName(b)!.segment || a.localeCompare(b));
  const partials = legacy.filter((name) => PARTIAL.test(name)).sort();
  const start = receiveStart([...legacy, ...spool, ...archived]);
  const spoolHas = (segment: string) => spool.includes(segment) || spool.includes(`${segment}.partial`);
  const resumesAt = (partial: string): boolean => {
    const segment = PARTIAL.exec(partial)![1]!;
    const parsed = parseSegmentName(segment)!;
    return start !== null && start.timeline === parsed.timeline && start.segment === parsed.segment && !spoolHas(segment);
  };
  return {
    push: [...histories, ...segments],
    toSpool: partials.filter(resumesAt),
    aside: partials.filter((name) => !resumesAt(name)),
  };
}

export interface LegacyWalDrainOptions {
  /** The repository's `wal/` of an older version (the PostgreSQL user's: read through guarded handles). */
  readonly legacy: WalArchive;
  readonly spool: WalArchive;
  readonly objects: RepositoryStore;
  readonly generation: number;
  readonly index: WalIndex;
  readonly logger: Logger;
  /** The archive's data key (Repository.archiveKey): undefined unencrypted, as a repository holding a legacy wal/ is. */
  readonly dataKey: DataKey | undefined;
}

/** What a drain did. */
export interface LegacyDrainReport {
  readonly pushed: number;
  readonly toSpool: string[];
  readonly setAside: number;
}

/**
 * Drains a repository's `wal/` of an older version (where pg_receivewal
 * wrote before the spool) into the archive's objects, then removes it:
 * every history and complete segment put at its archive key (a history
 * already stored is compared, never replaced: one that differs is kept as
 * a set-aside object), the `.partial` streaming resumes from moved to the
 * spool, any other `.partial` and all of `wal/diverged/<time>/` kept as
 * `diverged/<time>/` objects. Each file is removed only once stored:
 * after a crash at any point the next drain takes up what is left (puts
 * are idempotent; a `.partial` is copied under a temporary name, renamed
 * once whole). Run by the archiver before it receives anything, so no
 * pg_receivewal writes the spool meanwhile. Null when there is no `wal/`.
 */
export async function drainLegacyWal(options: LegacyWalDrainOptions): Promise<LegacyDrainReport | null> {
  const { legacy, spool, objects, generation, index, logger, dataKey } = options;
  const names = await legacy.names();
  if (names.length === 0 && !(await legacy.exists())) return null;
  const spoolNames = await spool.names();
  // A copy into the spool a crash interrupted: made anew below if still wanted.
  for (const name of spoolNames.filter((each) => each.endsWith(COPYING))) await spool.remove(name);
  const plan = legacyDrainPlan(names, spoolNames, await index.names());
  const folder = divergedFolder().at(-1)!;
  let pushed = 0;
  let setAside = 0;
  for (const name of plan.push) {
    // Unchecked, as an earlier Relevo archived it (no primary to compare with at this point).
    const outcome = await putWalFile({ source: legacy, objects, generation, dataKey, checks: null }, name);
    if (outcome.kind === "refused" && !outcome.differs) {
      // Not a file root may read (a link, a directory): the drain fails its round, as any read of it would.
      throw new RelevoError(ErrorCode.DataDirNotOurs, `${legacy.path}/${name} is refused: ${outcome.reason}`);
    }
    if (outcome.kind === "refused") {
      // Another branch of that timeline number: the archive's history stays, this one is kept aside.
      await setAsideObject({ source: legacy, objects, generation, folder, dataKey }, name);
      setAside += 1;
      logger.error({ history: name, folder }, "a legacy wal/ history differs from the archive's: kept under diverged/, never replaced");
    } else if (outcome.kind !== "absent") {
      index.added(name);
      pushed += 1;
    }
    await legacy.remove(name);
  }
  for (const name of plan.toSpool) {
    await copyIntoSpool(legacy, spool, name);
    await legacy.remove(name);
  }
  for (const name of plan.aside) {
    await setAsideObject({ source: legacy, objects, generation, folder, dataKey }, name);
    setAside += 1;
    await legacy.remove(name);
  }
  setAside += await drainDiverged(options, folder);
  // Anything else in it (a temporary file of pg_receivewal's) is no WAL of the archive's.
  await legacy.removeAll();
  const report = { pushed, toSpool: plan.toSpool, setAside };
  logger.info({ wal: legacy.path, ...report }, "the repository's legacy wal/ drained into its archive objects and removed");
  return report;
}

/** Every file of `wal/diverged/<time>/` as a `diverged/<time>/` object (a folder of another name: the drain's time), then removed. */
async function drainDiverged(options: LegacyWalDrainOptions, drainFolder: string): Promise<number> {
  const { legacy, objects, generation, dataKey } = options;
  const diverged = legacy.folder(["diverged"]);
  let count = 0;
  for (const time of await diverged.names()) {
    const folder = diverged.folder([time]);
    for (const name of await folder.names()) {
      if (isWalName(name)) {
        await setAsideObject({ source: folder, objects, generation, folder: FOLDER.test(time) ? time : drainFolder, dataKey }, name);
        count += 1;
      }
      await folder.remove(name);
    }
    await folder.removeAll();
  }
  return count;
}

function isWalName(name: string): boolean {
  return HISTORY.test(name) || PARTIAL.test(name) || parseSegmentName(name) !== null;
}

/** Puts `name` of `source` (through its guarded handles) at its `diverged/<folder>/` key; a file gone meanwhile is skipped. */
async function setAsideObject(
  options: {
    readonly source: WalArchive;
    readonly objects: RepositoryStore;
    readonly generation: number;
    readonly folder: string;
    readonly dataKey: DataKey | undefined;
  },
  name: string,
): Promise<void> {
  const held = await options.source.openFiles([name]);
  const file = held.files[0];
  if (!file) {
    await held.close();
    return;
  }
  const content = file.createReadStream({ highWaterMark: 1024 * 1024, autoClose: true });
  try {
    await options.objects.putStream(divergedKey(options.generation, options.folder, name), content, { dataKey: options.dataKey });
  } finally {
    content.destroy();
  }
}

/**
 * Copies the `.partial` `name` into the spool, owned by the spool's owner
 * (pg_receivewal resumes writing it): under a temporary name first (made
 * anew by a drain resumed after a crash), renamed once whole.
 */
async function copyIntoSpool(legacy: WalArchive, spool: WalArchive, name: string): Promise<void> {
  const content = await legacy.read(name);
  if (content === null) return;
  const temporary = `${name}${COPYING}`;
  await spool.create(temporary, content);
  await spool.rename(temporary, name);
}
