import { ErrorCode, RelevoError } from "../errors";
import { parseSegmentName } from "../postgres/wal-names";
import { WAL_LONG_HEADER_BYTES, walSegmentSystemIdentifier } from "../postgres/wal-page-header";
import type { Repository } from "../storage/repository";
import { archiveKey } from "../repository/repository-layout";
import { absentAsNull } from "../repository/repository-store";
import type { BackupManifest } from "../backup/manifest";

/** Whose the repository's content is: the system identifier it records, and where that was read. */
export interface ArchiveIdentity {
  readonly systemIdentifier: string;
  /** For messages: the segment whose header, or the backup whose manifest, names it. */
  readonly source: string;
}

/** How many of the newest segments are tried for a header (the newest may be a .partial not written yet). */
const SEGMENTS_TRIED = 8;

/**
 * The cluster the repository belongs to: the system identifier in the first
 * page of its newest archived or received segment (the archive is the truth
 * about what it holds; an object's header by a range read), else in its
 * newest completed backup's manifest; null for an empty repository.
 */
export async function archiveIdentity(repository: Repository): Promise<ArchiveIdentity | null> {
  // No archive is no name (WalArchive and WalIndex say so); one that cannot be read is an error: taken for empty, it
  // would let another cluster's WAL in.
  return identityOf(repository, await repository.archivedWal.names(), (name) =>
    repository.archivedWal.readStart(name, WAL_LONG_HEADER_BYTES),
  );
}

/**
 * The same, from what the repository holds alone (its pushed segments,
 * else its backups), never from the spool: what the WAL pusher checks a
 * received segment against (a file planted in the spool must not vouch
 * for itself).
 */
export async function pushedArchiveIdentity(repository: Repository): Promise<ArchiveIdentity | null> {
  const { objects, generation } = repository;
  return identityOf(repository, await repository.archive.names(), async (name) => {
    const reader = await absentAsNull(objects.openReader(archiveKey(generation, name)));
    return reader === null || reader.contentSize < WAL_LONG_HEADER_BYTES ? null : reader.read({ start: 0, end: WAL_LONG_HEADER_BYTES });
  });
}

async function identityOf(
  repository: Repository,
  names: readonly string[],
  readHeader: (name: string) => Promise<Buffer | null>,
): Promise<ArchiveIdentity | null> {
  const newest = names
    .filter((name) => parseSegmentName(name.replace(/\.partial$/, "")) !== null)
    .sort()
    .reverse();
  for (const name of newest.slice(0, SEGMENTS_TRIED)) {
    const systemIdentifier = await segmentSystemIdentifier(readHeader, name);
    if (systemIdentifier) return { systemIdentifier, source: `WAL segment ${name}` };
  }
  return manifestIdentity(await repository.listManifests());
}

/**
 * The identity the manifests vouch for: the newest completed backup's. A
 * backup that failed before it reached the primary (connection refused, no
 * source) is written with an empty system identifier, which names no
 * cluster: taken for the archive's, it would make every primary foreign.
 * Pure; `manifests` oldest first.
 */
export function manifestIdentity(manifests: readonly Pick<BackupManifest, "id" | "status" | "systemIdentifier">[]): ArchiveIdentity | null {
  const newest = manifests.filter((manifest) => manifest.status === "completed" && manifest.systemIdentifier !== "").at(-1);
  return newest ? { systemIdentifier: newest.systemIdentifier, source: `backup ${newest.id}` } : null;
}

/**
 * The system identifier in an archived segment's header; null when it has
 * none: absent, shorter than a header, not a header (a .partial not written
 * yet), or a link at its name in the receiving directory (refused with
 * DATA_DIR_NOT_OURS, never followed: it is the PostgreSQL user's). An object
 * that cannot be read (REPOSITORY_UNAVAILABLE, _CORRUPT) is an error: taken
 * for "no header", eight of them would make the repository look empty.
 */
async function segmentSystemIdentifier(readHeader: (name: string) => Promise<Buffer | null>, name: string): Promise<string | null> {
  const header = await readHeader(name).catch((error: unknown) => {
    if (error instanceof RelevoError && error.code === ErrorCode.DataDirNotOurs) return null;
    throw error;
  });
  return header ? walSegmentSystemIdentifier(header) : null;
}

/**
 * Why the archiver must not stream `node`'s WAL into this archive, or null
 * when it may: WAL of another cluster (another system identifier) next to
 * the archive's would be replayed by no restore, and would hide the
 * archive's own history. Pure.
 */
export function foreignWalRefusal(
  node: { readonly name: string; readonly systemIdentifier: string },
  archive: ArchiveIdentity | null,
  walDir: string,
): string | null {
  // An empty identifier names no cluster (a failed backup's manifest, an unreadable node): nothing to compare.
  if (archive === null || archive.systemIdentifier === "" || node.systemIdentifier === "") return null;
  if (archive.systemIdentifier === node.systemIdentifier) return null;
  return (
    `the WAL archive refuses ${node.name}: its system identifier ${node.systemIdentifier} is not the archive's ` +
    `${archive.systemIdentifier} (${archive.source} in ${walDir}), so it is another cluster; point RELEVO_REPOSITORY ` +
    `at this cluster's repository, or rebuild the archive's cluster with relevo restore --cluster`
  );
}
