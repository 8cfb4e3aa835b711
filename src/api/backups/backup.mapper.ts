import type { BackupProgress } from "../../backup/backup-progress";
import type { BackupManifest } from "../../backup/manifest";
import type { Backup } from "./backup.type";

export function toBackup(manifest: BackupManifest, progress: BackupProgress | null = null): Backup {
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
    source: manifest.source,
    error: manifest.error,
    verification: manifest.verification ? { ...manifest.verification, badFiles: [...manifest.verification.badFiles] } : null,
    provenRestorableAt:
      manifest.verification?.contentOk && manifest.verification.restoreTest?.ok ? manifest.verification.checkedAt : null,
    progress,
  } as Backup;
}
