import type { BackupProgress } from "../../backup/backup-progress";
import { storedCounts, type BackupManifest, type ManifestSummary } from "../../backup/manifest";
import type { BackupCopyState } from "../../backup/backup-copies";
import type { Backup, BackupChainLink } from "./backup.type";

export function toChainLink(manifest: BackupManifest): BackupChainLink {
  return {
    id: manifest.id,
    type: manifest.type,
    startedAt: manifest.startedAt,
    storedBytes: manifest.storedBytes,
    ...storedCounts(manifest),
  } as BackupChainLink;
}

export function toBackup(
  manifest: BackupManifest | ManifestSummary,
  progress: BackupProgress | null = null,
  chain: readonly BackupManifest[] | null = null,
  copies: readonly BackupCopyState[] = [],
): Backup {
  const completed = manifest.status === "completed";
  return {
    id: manifest.id,
    type: manifest.type,
    status: manifest.status,
    startedAt: manifest.startedAt,
    finishedAt: manifest.finishedAt,
    sizeBytes: completed ? manifest.sizeBytes : null,
    storedBytes: completed ? manifest.storedBytes : null,
    fileCount: completed ? manifest.fileCount : null,
    timeline: manifest.timeline || null,
    startLsn: completed ? manifest.startLsn : null,
    stopLsn: manifest.stopLsn,
    reference: manifest.reference ? { id: manifest.reference } : null,
    ...(completed ? storedCounts(manifest) : { filesStored: null, blocksStored: null }),
    changesFrom: manifest.changesFrom ?? null,
    promotedToFull: manifest.promotedToFull ?? null,
    chain: chain ? chain.map(toChainLink) : null,
    source: manifest.source,
    error: manifest.error,
    verification: manifest.verification
      ? {
          ...manifest.verification,
          badFiles: [...manifest.verification.badFiles],
          restoreTest: manifest.verification.restoreTest
            ? {
                ...manifest.verification.restoreTest,
                tablesCompared: manifest.verification.restoreTest.tablesCompared ?? 0,
                referenceMissing: manifest.verification.restoreTest.referenceMissing ?? null,
              }
            : null,
        }
      : null,
    referencePoint: manifest.referencePoint
      ? {
          name: manifest.referencePoint.name,
          lsn: manifest.referencePoint.lsn,
          takenOn: manifest.referencePoint.kind === "replay-pause" ? manifest.referencePoint.node : null,
          createdAt: manifest.referencePoint.createdAt,
          tables: manifest.referencePoint.tables.length,
        }
      : null,
    provenRestorableAt: manifest.verification?.contentOk && manifest.verification.restoreTest?.ok ? manifest.verification.checkedAt : null,
    progress,
    copies: copies.map((copy) => ({ ...copy })),
  } as Backup;
}
