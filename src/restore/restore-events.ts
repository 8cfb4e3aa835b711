import type { EventDraft } from "../events/event-map";
import type { RepositoryFallback } from "./restore-from-repositories";

/** A restore's copy failed on one repository's content and the next repository is tried. Pure. */
export function restoreRepositoryFailedEvent(fallback: RepositoryFallback): EventDraft<"restore:repository-failed"> {
  return {
    kind: "restore:repository-failed",
    severity: "warning",
    node: null,
    message:
      `restore of backup ${fallback.backupId} into ${fallback.target}: repository ${fallback.repository} (${fallback.location}) ` +
      `failed (${fallback.error}); trying repository ${fallback.next}`,
    data: { ...fallback },
  };
}
