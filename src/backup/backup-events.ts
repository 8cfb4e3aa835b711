import type { BackupRecord, EventDraft } from "../events/event-map";
import type { NodeRef } from "../nodes/node-driver";
import type { BackupManifest, BackupType, Verification } from "./manifest";

/**
 * Pure: the events a backup's life records, and the record of a backup they
 * carry (which the consolidator upserts into table backups).
 */

export function backupRecord(manifest: BackupManifest): BackupRecord {
  return {
    id: manifest.id,
    type: manifest.type,
    status: manifest.status,
    source: manifest.source,
    reference: manifest.reference,
    timeline: manifest.timeline || null,
    startLsn: manifest.status === "completed" ? manifest.startLsn : null,
    stopLsn: manifest.stopLsn,
    sizeBytes: manifest.status === "completed" ? manifest.sizeBytes : null,
    storedBytes: manifest.status === "completed" ? manifest.storedBytes : null,
    error: manifest.error,
    startedAt: manifest.startedAt,
    finishedAt: manifest.finishedAt,
  };
}

/** `asked` is the type asked for; the manifest's may be a full instead (see decideType). */
export function backupStartedEvent(
  manifest: BackupManifest,
  options: { readonly asked: BackupType; readonly source: NodeRef },
): EventDraft<"backup:started"> {
  const { asked, source } = options;
  return {
    kind: "backup:started",
    severity: "info",
    node: source.name,
    message: `backup ${manifest.id} (${asked}) started from ${source.name}`,
    data: backupRecord(manifest),
  };
}

export function backupCompletedEvent(manifest: BackupManifest, source: NodeRef): EventDraft<"backup:completed"> {
  const durationMs = Date.parse(manifest.finishedAt!) - Date.parse(manifest.startedAt);
  return {
    kind: "backup:completed",
    severity: "info",
    node: source.name,
    message: `backup ${manifest.id} completed: ${manifest.sizeBytes} bytes, ${manifest.storedBytes} stored, ${durationMs} ms`,
    data: { ...backupRecord(manifest), durationMs },
  };
}

export function backupFailedEvent(
  failed: BackupManifest,
  options: { readonly source: NodeRef; readonly error: Error },
): EventDraft<"backup:failed"> {
  return {
    kind: "backup:failed",
    severity: "critical",
    node: options.source.name,
    message: options.error.message,
    data: backupRecord(failed),
  };
}

export function backupExpiredEvent(expired: BackupManifest): EventDraft<"backup:expired"> {
  return {
    kind: "backup:expired",
    severity: "info",
    node: null,
    message: `backup ${expired.id} expired by retention`,
    data: backupRecord(expired),
  };
}

export function backupVerifiedEvent(id: string, verification: Verification): EventDraft<"backup:verified"> {
  const ok = verification.contentOk && (verification.restoreTest?.ok ?? true);
  return {
    kind: "backup:verified",
    severity: ok ? "info" : "critical",
    node: null,
    message: ok
      ? `backup ${id} verified${verification.restoreTest ? ", restore test passed" : ""}`
      : `backup ${id} failed verification: ${verification.badFiles.length ? `damaged ${verification.badFiles.slice(0, 5).join(", ")}` : verification.restoreTest?.error}`,
    data: { id, ok, badFiles: [...verification.badFiles], restoreTested: verification.restoreTest !== null },
  };
}

/** A manifest read back from the repository (see BackupService.rescan). */
export function backupCatalogedEvent(manifest: BackupManifest): EventDraft<"backup:cataloged"> {
  return {
    kind: "backup:cataloged",
    severity: "info",
    node: null,
    message: `backup ${manifest.id} (${manifest.status}) read from the repository`,
    data: backupRecord(manifest),
  };
}

/** Expiry left a backup past retention because another holds its lock, and has for long (see heldBackTooLong). */
export function backupExpiryHeldBackEvent(
  id: string,
  holder: { purpose: string; host: string; pid: number; since: string },
  heldForMs: number,
): EventDraft<"backup:expiry-held-back"> {
  return {
    kind: "backup:expiry-held-back",
    severity: "warning",
    node: null,
    message:
      `backup ${id} is past retention but not expired: its lock has been held for ${Math.round(heldForMs / 60_000)} min ` +
      `(${holder.purpose}, pid ${holder.pid} on ${holder.host}); it and the WAL it needs stay until that holder lets go`,
    data: { id, holder, heldForMs },
  };
}

/** A backup copied into another repository (RELEVO_BACKUP_REPO=all): completed there. */
export function backupCopiedEvent(copy: BackupManifest, repository: number, durationMs: number): EventDraft<"backup:copied"> {
  return {
    kind: "backup:copied",
    severity: "info",
    node: null,
    message: `backup ${copy.id} copied to repository ${repository}: ${copy.storedBytes} bytes stored, ${durationMs} ms`,
    data: { id: copy.id, repository, storedBytes: copy.storedBytes, durationMs },
  };
}

/** A backup's copy into another repository failed: retried after the next backup. */
export function backupCopyFailedEvent(id: string, repository: number, reason: string): EventDraft<"backup:copy-failed"> {
  return {
    kind: "backup:copy-failed",
    severity: "warning",
    node: null,
    message: `backup ${id} was not copied to repository ${repository} (retried after the next backup): ${reason}`,
    data: { id, repository, reason },
  };
}
