import { ErrorCode, RelevoError } from "../errors";
import { assertBackupId } from "../backup/manifest";
import { parseSegmentName } from "../postgres/wal-names";

/**
 * Where each thing lives in a repository, as object keys: the same in a
 * directory and in a bucket. Pure.
 *
 *   repository.json                       what the repository is (format, cluster, generation)
 *   keys/…                                an encrypted repository's salt, key check and wrapped data keys
 *   <generation>manifests/<backup id>     one manifest per backup, apart from content: listing them lists no content
 *   <generation>backups/<id>/data/<n>     a large file's content, by sequence (never a data-directory path)
 *   <generation>backups/<id>/bundles/<n>  small files' contents, one range each
 *   <generation>archive/<TTTTTTTTLLLLLLLL>/<segment>   WAL, 256 segments to a group (a listing stays short)
 *   <generation>archive/<TTTTTTTT>.history             timeline histories
 *   <generation>wal-summary/<segment>     what each archived segment changed
 *   <generation>diverged/<time>/<file>    archived WAL off the cluster's history, set aside (kept, never replayed)
 *
 * A generation ("" for the first cluster, then `g<N>/`) is what a cluster
 * started over in the same repository writes under: the previous one's
 * objects stay, unread, and nothing is moved (a move is a full copy on S3).
 */
export const REPOSITORY_DESCRIPTOR_KEY = "repository.json";
export const KEYS_PREFIX = "keys/";

/**
 * Where a first cluster's backups and WAL live, and a directory
 * repository's legacy backups: a repository with anything under one has
 * content (encryption can no longer be turned on). The legacy `wal/` is
 * not here: it is the PostgreSQL user's, never walked by a store (the
 * repository checks it through its guarded handles).
 */
export const REPOSITORY_CONTENT_PREFIXES: readonly string[] = ["manifests/", "backups/", "archive/", "wal-summary/", "diverged/"];

export function generationPrefix(generation: number): string {
  if (!Number.isSafeInteger(generation) || generation < 0) throw layoutDefect(`generation ${generation}`);
  return generation === 0 ? "" : `g${generation}/`;
}

export function manifestsPrefix(generation: number): string {
  return `${generationPrefix(generation)}manifests/`;
}

export function manifestKey(generation: number, backupId: string): string {
  assertBackupId(backupId);
  return `${manifestsPrefix(generation)}${backupId}`;
}

export function backupContentPrefix(generation: number, backupId: string): string {
  assertBackupId(backupId);
  return `${generationPrefix(generation)}backups/${backupId}/`;
}

/** A large file's content: the `sequence`-th stored by that backup. */
export function dataKey(generation: number, backupId: string, sequence: number): string {
  return `${backupContentPrefix(generation, backupId)}data/${sequenceName(sequence)}`;
}

export function bundleKey(generation: number, backupId: string, sequence: number): string {
  return `${backupContentPrefix(generation, backupId)}bundles/${sequenceName(sequence)}`;
}

export function archivePrefix(generation: number): string {
  return `${generationPrefix(generation)}archive/`;
}

/** An archived WAL segment (`000000010000000A000000FF`) or timeline history (`00000002.history`). */
export function archiveKey(generation: number, walFileName: string): string {
  if (/^[0-9A-F]{8}\.history$/.test(walFileName)) return `${archivePrefix(generation)}${walFileName}`;
  if (parseSegmentName(walFileName) === null) throw layoutDefect(`WAL file name ${JSON.stringify(walFileName)}`);
  return `${archivePrefix(generation)}${walFileName.slice(0, 16)}/${walFileName}`;
}

/** The WAL file an archive key holds, or null when the key is not one (another object under the prefix). Pure. */
export function walFileNameOf(generation: number, key: string): string | null {
  const prefix = archivePrefix(generation);
  if (!key.startsWith(prefix)) return null;
  const rest = key.slice(prefix.length);
  if (/^[0-9A-F]{8}\.history$/.test(rest)) return rest;
  const match = /^([0-9A-F]{16})\/([0-9A-F]{24})$/.exec(rest);
  return match && match[2]!.startsWith(match[1]!) && parseSegmentName(match[2]!) !== null ? match[2]! : null;
}

/**
 * Where an archived WAL file set aside at `folder` (a time, see
 * divergedFolder) is kept: off the cluster's history, never replayed. A
 * `.partial` too (one received off the history, or left by an older
 * archive's directory: see legacy-wal-drain).
 */
export function divergedKey(generation: number, folder: string, walFileName: string): string {
  if (!/^[0-9A-Za-z-]+$/.test(folder)) throw layoutDefect(`set-aside folder ${JSON.stringify(folder)}`);
  archiveKey(generation, walFileName.replace(/^([0-9A-F]{24})\.partial$/, "$1"));
  return `${generationPrefix(generation)}diverged/${folder}/${walFileName}`;
}

export function walSummaryPrefix(generation: number): string {
  return `${generationPrefix(generation)}wal-summary/`;
}

export function walSummaryKey(generation: number, segmentName: string): string {
  if (parseSegmentName(segmentName) === null) throw layoutDefect(`segment name ${JSON.stringify(segmentName)}`);
  return `${walSummaryPrefix(generation)}${segmentName}`;
}

/**
 * Where a directory repository kept a segment's summary before objects:
 * plain JSON, no codec. Read when the segment has no summary object, and
 * expired with it; never written.
 */
export function legacyWalSummaryKey(generation: number, segmentName: string): string {
  return `${walSummaryKey(generation, segmentName)}.json`;
}

/** The segment a summary key (an object's or a legacy one's) is of, or null when the key is neither. Pure. */
export function summarizedSegmentOf(generation: number, key: string): string | null {
  const prefix = walSummaryPrefix(generation);
  if (!key.startsWith(prefix)) return null;
  const name = key.slice(prefix.length).replace(/\.json$/, "");
  return parseSegmentName(name) === null ? null : name;
}

/** Sequence numbers as fixed-width names, so that keys sort as the numbers do. */
function sequenceName(sequence: number): string {
  if (!Number.isSafeInteger(sequence) || sequence < 0 || sequence > 99_999_999) throw layoutDefect(`sequence ${sequence}`);
  return String(sequence).padStart(8, "0");
}

function layoutDefect(what: string): RelevoError {
  return new RelevoError(ErrorCode.Internal, `${what} has no place in a repository`);
}
