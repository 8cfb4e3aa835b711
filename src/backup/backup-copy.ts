import type { FileEntry, NodeDriver, NodeRef } from "../nodes/node-driver";
import { lsnToNumber } from "../postgres/lsn";
import { BundleWriter } from "../storage/bundle-writer";
import { BackupContentWriter } from "../storage/backup-content";
import { forEachParallel } from "../storage/copy-file";
import type { Repository } from "../storage/repository";
import type { BackupSession } from "./backup-session";
import { planFile, type ChangeSet, type FilePlan } from "./change-plan";
import { copyPlanned, type CopyTarget } from "./copy-strategies";
import { isExcluded, unloggedRelationsOf } from "./exclusions";
import type { BackupManifest, Compression, ManifestEntry } from "./manifest";
import type { CopyProgress } from "./take-backup";

/** What a backup copies: the data directory less what PostgreSQL rebuilds or never needs (see exclusions). */
export interface BackupFileList {
  readonly directories: readonly FileEntry[];
  readonly files: readonly FileEntry[];
}

export async function listBackupFiles(options: { readonly driver: NodeDriver; readonly source: NodeRef }): Promise<BackupFileList> {
  const listed = await options.driver.listFiles(options.source, ".");
  const unlogged = unloggedRelationsOf(listed);
  const kept = listed.filter((entry) => !isExcluded(entry, unlogged) && entry.type !== "symlink");
  return {
    directories: kept.filter((entry) => entry.type === "directory"),
    files: kept.filter((entry) => entry.type === "file"),
  };
}

export interface CopiedFiles {
  /** The manifest's entries: the directories, then the files as they were copied (those dropped meanwhile left out). */
  readonly entries: readonly ManifestEntry[];
  readonly filesDone: number;
  readonly filesTotal: number;
  readonly bytesDone: number;
  /** Bytes put into the repository (their stored form). */
  readonly bytesStored: number;
}

/**
 * Copies the listed files into the repository, several at a time: a full
 * stores each whole, a differential or incremental what its plan against
 * the reference says (see change-plan). The backup fails as soon as its
 * session is lost.
 */
export async function copyBackupFiles(options: {
  readonly driver: NodeDriver;
  readonly repository: Repository;
  readonly session: BackupSession;
  readonly source: NodeRef;
  readonly id: string;
  /** The manifest's data key (an encrypted repository), which every content object is written under. */
  readonly dataKeyId: string | undefined;
  readonly list: BackupFileList;
  readonly reference: BackupManifest | null;
  readonly changes: ChangeSet | null;
  readonly checkpointedAtMs: number;
  readonly compression: Compression;
  readonly parallelism: number;
  readonly onProgress?: (progress: CopyProgress) => void;
}): Promise<CopiedFiles> {
  const { driver, repository, session, source, id, list, reference, changes } = options;
  // A file modified within this second cannot be told apart by its mtime
  // later (1 s resolution on some file systems): flagged, never trusted.
  const backupStartSecond = Math.floor(options.checkpointedAtMs / 1000) * 1000;
  const { files } = list;
  const bytesTotal = files.reduce((sum, entry) => sum + entry.size, 0);
  const entries = new Map<string, ManifestEntry>();
  for (const directory of list.directories) {
    entries.set(directory.path, { path: directory.path, type: "directory", size: 0, mtimeMs: directory.mtimeMs });
  }
  const referenceEntries = new Map((reference?.files ?? []).map((entry) => [entry.path, entry] as const));
  const sinceLsn = reference ? lsnToNumber(reference.startLsn) : 0;
  let filesDone = 0;
  let bytesDone = 0;
  // Uploads report as they go: a large file's progress shows before it is whole.
  const report = (): void =>
    options.onProgress?.({
      phase: "copying",
      filesDone,
      filesTotal: files.length,
      bytesDone,
      bytesTotal,
      bytesStored: content.bytesStored,
    });
  const content = new BackupContentWriter(repository, { id, dataKeyId: options.dataKeyId }, report);
  const bundles = new BundleWriter(content, options.compression);
  const target: CopyTarget = { driver, source, bundles, content };
  // Largest first: the big relation files set the pace, the small ones fill in around them.
  const byDescendingSize = [...files].sort((a, b) => b.size - a.size);
  try {
    await forEachParallel(byDescendingSize, options.parallelism, async (file: FileEntry) => {
      session.throwIfLost();
      const plan: FilePlan = reference
        ? planFile(file, referenceEntries.get(file.path), changes)
        : { kind: "whole", reason: "full backup" };
      const copied = await copyPlanned(target, file, plan, sinceLsn);
      if (copied === null) return; // dropped while we copied: WAL replay removes it anyway
      entries.set(file.path, {
        path: file.path,
        type: "file",
        size: copied.size,
        mtimeMs: file.mtimeMs,
        ...(file.mtimeMs >= backupStartSecond ? { mtimeUnreliable: true } : {}),
        ...(copied.crc32 ? { crc32: copied.crc32 } : {}),
        ...(copied.stored ? { stored: copied.stored } : {}),
        ...(copied.blocks ? { blocks: copied.blocks } : {}),
      });
      filesDone += 1;
      bytesDone += file.size;
      report();
    });
  } finally {
    await bundles.close();
  }
  session.throwIfLost();
  return { entries: [...entries.values()], filesDone, filesTotal: files.length, bytesDone, bytesStored: content.bytesStored };
}
