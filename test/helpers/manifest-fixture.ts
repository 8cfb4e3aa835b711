import { MANIFEST_VERSION, type BackupManifest } from "../../src/backup/manifest";

/** A completed full backup's manifest for tests of the rules; its times come from the id's last character (ids "F1", "F2"…). */
export const manifest = (id: string, overrides: Partial<BackupManifest> = {}): BackupManifest => ({
  formatVersion: MANIFEST_VERSION,
  id,
  type: "full",
  status: "completed",
  reference: null,
  cluster: "c",
  systemIdentifier: "1",
  pgVersion: "15",
  source: "node1",
  timeline: 1,
  startLsn: "0/1000028",
  stopLsn: "0/1000100",
  startedAt: `2026-11-0${id.slice(-1)}T00:00:00.000Z`,
  stoppedAt: `2026-11-0${id.slice(-1)}T00:01:00.000Z`,
  finishedAt: `2026-11-0${id.slice(-1)}T00:01:05.000Z`,
  backupLabel: "",
  tablespaceMap: null,
  compression: "gzip",
  sizeBytes: 1,
  storedBytes: 1,
  fileCount: 1,
  error: null,
  files: [],
  ...overrides,
});
