import { expect } from "@jest/globals";
import { isExcluded, unloggedRelationsOf } from "../../src/backup/exclusions";
import { assertBackupId, backupId, isBackupId, labelStartLsn, labelTimeline } from "../../src/backup/manifest";
import { recoverySettings, recoveryTargetFrom, standbySettings, stripUpstreamSettings } from "../../src/restore/recovery-target";
import { recoveryWindow } from "../../src/restore/recovery-window";
import { expiryGroups, planRetention, walBeforeKeepingSpooled, walBeforeSparing, type RetentionPolicy } from "../../src/backup/retention";
import { chainChange } from "../../src/backup/backup-lock";
import { parseSegmentName, segmentName, segmentNumber, segmentStartLsn } from "../../src/postgres/wal-names";
import { recordLineOfSegment, SummaryBuilder } from "../../src/wal/waldump-summary";
import { checksumMismatches, referenceRecovery, type ReferencePoint } from "../../src/backup/reference-point";
import { chooseReferenceReplica } from "../../src/backup/reference-source";
import { ErrorCode } from "../../src/errors";
import { chooseBackupSource } from "../../src/backup/backup-source";
import { progressBar } from "../../src/cli/backup-commands";
import { chooseBackup } from "../../src/restore/choose-backup";
import { manifest } from "../helpers/manifest-fixture";

describe("what a backup copies (pure)", () => {
  const entry = (path: string, type: "file" | "directory" = "file") => ({ path, type });
  test("runtime files and the contents of runtime directories are left out, the directories kept", () => {
    for (const path of [
      "postmaster.pid",
      "postmaster.opts",
      "backup_label",
      "standby.signal",
      "pg_wal/000000010000000000000001",
      "pg_replslot/relevo_node2/state",
      "pg_stat_tmp/x",
      "base/5/pgsql_tmp/pgsql_tmp123.0",
      "global/pg_internal.init",
      "base/5/t3_16384",
      // Relevo's own temporary files left by a crash before their rename (one may hold the replication password).
      "postgresql.auto.conf.relevo-tmp-123-0a1b2c3d4e5f",
      "standby.signal.relevo-tmp-77",
      // The node's own WAL directory, fed by Relevo during a recovery: WAL and its script, never data.
      "relevo_wal/000000010000000000000003",
      "relevo_wal/restore-wal.sh",
    ]) {
      expect(isExcluded(entry(path), new Set())).toBe(true);
    }
    for (const path of ["PG_VERSION", "global/pg_control", "base/5/16384", "base/5/16384_vm", "pg_xact/0000", "postgresql.auto.conf"]) {
      expect(isExcluded(entry(path), new Set())).toBe(false);
    }
    expect(isExcluded(entry("pg_wal", "directory"), new Set())).toBe(false);
    expect(isExcluded(entry("relevo_wal", "directory"), new Set())).toBe(true);
  });

  test("an unlogged relation keeps only its init fork", () => {
    const files = ["base/5/16400", "base/5/16400.1", "base/5/16400_fsm", "base/5/16400_vm", "base/5/16400_init", "base/5/16401"].map((p) =>
      entry(p),
    );
    const unlogged = unloggedRelationsOf(files);
    expect(files.filter((f) => !isExcluded(f, unlogged)).map((f) => f.path)).toEqual(["base/5/16400_init", "base/5/16401"]);
  });
});

describe("WAL names and labels (pure)", () => {
  test("segment names round-trip and follow LSNs", () => {
    expect(segmentName(1, segmentNumber("0/3000028"))).toBe("000000010000000000000003");
    expect(segmentName(2, segmentNumber("1/FF000000"))).toBe("0000000200000001000000FF");
    expect(parseSegmentName("0000000200000001000000FF")).toEqual({ timeline: 2, segment: segmentNumber("1/FF000000") });
    expect(parseSegmentName("00000002.history")).toBeNull();
  });

  test("backup ids sort by time; labels give the redo LSN and timeline", () => {
    expect(backupId("full", new Date("2026-11-25T22:45:00.123Z"))).toBe("20261125T224500Z-F");
    expect(isBackupId(backupId("incremental", new Date()))).toBe(true);
    for (const notAnId of ["../../x", "20261125T224500Z-F/..", "20261125T224500Z-F/../../x", "", "nope", "20261125T224500Z-X"]) {
      expect(isBackupId(notAnId)).toBe(false);
      expect(() => assertBackupId(notAnId)).toThrow(expect.objectContaining({ code: ErrorCode.BadUserInput }));
    }
    const label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 1\n";
    expect(labelStartLsn(label)).toBe("0/2000028");
    expect(labelTimeline(label)).toBe(1);
  });
});

describe("recovery settings (pure)", () => {
  test("a copy replays what Relevo feeds into its own directory, promotes at the target and cannot touch the live cluster", () => {
    const settings = recoverySettings({ target: { kind: "time", time: "2026-11-25T10:00:00Z" } });
    // Its own relevo_wal/ (relative: PostgreSQL runs restore_command in the data directory), never the repository.
    expect(settings).toContain(`restore_command = 'sh relevo_wal/restore-wal.sh "%f" "%p" recovery'`);
    expect(settings).not.toContain("/wal/");
    expect(settings).toContain("recovery_target_time = '2026-11-25 10:00:00.000+00'");
    expect(settings).toContain("recovery_target_action = 'promote'");
    for (const line of ["archive_mode = off", "primary_conninfo = ''", "primary_slot_name = ''", "synchronous_standby_names = ''"])
      expect(settings).toContain(line);
    expect(recoverySettings({ target: { kind: "name", name: "it's" } })).toContain("recovery_target_name = 'it''s'");
  });

  test("targets: at most one, and well-formed", () => {
    expect(recoveryTargetFrom({})).toEqual({ kind: "latest" });
    expect(recoveryTargetFrom({ lsn: "0/3000000" })).toEqual({ kind: "lsn", lsn: "0/3000000" });
    expect(() => recoveryTargetFrom({ lsn: "0/1", time: "2026-01-01T00:00:00Z" })).toThrow(
      expect.objectContaining({ code: ErrorCode.BadUserInput }),
    );
    expect(() => recoverySettings({ target: { kind: "lsn", lsn: "nonsense" } })).toThrow(
      expect.objectContaining({ code: ErrorCode.BadUserInput }),
    );
  });

  test("pg_basebackup -R's upstream settings are stripped from postgresql.auto.conf", () => {
    const stripped = stripUpstreamSettings(
      "# keep\nprimary_conninfo = 'host=x password=y'\nprimary_slot_name = 'relevo_node2'\nwork_mem = '8MB'\n",
    );
    expect(stripped).toBe("# keep\nwork_mem = '8MB'\n");
  });
});

const byCount = (keepFull: number): RetentionPolicy => ({ keepFull, keepDays: null, now: new Date() });

describe("retention (pure)", () => {
  test("keeps the newest N fulls with their dependents; WAL before the oldest kept start can go", () => {
    const backups = [
      manifest("F1", { startLsn: "0/1000028" }),
      manifest("I2", { type: "incremental", reference: "F1", startLsn: "0/2000028" }),
      manifest("F3", { startLsn: "0/5000028" }),
      manifest("I4", { type: "incremental", reference: "F3", startLsn: "0/6000028" }),
      manifest("F5", { startLsn: "0/9000028" }),
    ];
    expect(planRetention(backups, byCount(2))).toEqual({ expire: ["F1", "I2"], walBefore: 5 });
    expect(planRetention(backups, byCount(3))).toEqual({ expire: [], walBefore: 1 });
    expect(planRetention([manifest("F1", { status: "failed" })], byCount(1))).toEqual({ expire: [], walBefore: null });
  });

  test("by days: whatever is consistent in the window, the newest backup before it, and what each builds on", () => {
    // Consistent (stopped) on day n of November at 00:01; WAL starts at segment n.
    const backups = [
      manifest("F1", { startLsn: "0/1000028" }),
      manifest("D2", { type: "differential", reference: "F1", startLsn: "0/2000028" }),
      manifest("F3", { startLsn: "0/3000028" }),
      manifest("D4", { type: "differential", reference: "F3", startLsn: "0/4000028" }),
      manifest("D5", { type: "differential", reference: "F3", startLsn: "0/5000028" }),
      manifest("I6", { type: "incremental", reference: "D5", startLsn: "0/6000028" }),
    ];
    const at = (day: number, time = "12:00:00"): Date => new Date(`2026-11-0${day}T${time}.000Z`);
    // Window from Nov 4 12:00: D4 is the anchor; D5 and I6 are in it; F3 is what they build on. F1, D2 go.
    expect(planRetention(backups, { keepFull: 1, keepDays: 2, now: at(6) })).toEqual({ expire: ["F1", "D2"], walBefore: 3 });
    // Window from Nov 5 12:00: D5 is the anchor; D4 is not needed by the window, but the count keeps F3 with all it has.
    expect(planRetention(backups, { keepFull: 1, keepDays: 1, now: at(6) })).toEqual({ expire: ["F1", "D2"], walBefore: 3 });
    // A differential the window does not need goes, although the full under it stays (the anchor builds on it).
    const older = [
      manifest("F1", { startLsn: "0/1000028" }),
      manifest("D2", { type: "differential", reference: "F1", startLsn: "0/2000028" }),
      manifest("D3", { type: "differential", reference: "F1", startLsn: "0/3000028" }),
      manifest("F4", { startLsn: "0/4000028" }),
    ];
    expect(planRetention(older, { keepFull: 1, keepDays: 1, now: at(4) })).toEqual({ expire: ["D2"], walBefore: 1 });
    // A backup is restorable from its stop: one stopped a moment after the window began is in it, not the anchor.
    expect(planRetention(backups, { keepFull: 1, keepDays: 1, now: at(6, "00:00:59") }).expire).toEqual(["F1", "D2"]);
    // No backup before the window: all kept (the oldest is the closest a restore gets to the window's start).
    expect(planRetention(backups, { keepFull: 1, keepDays: 30, now: at(6) })).toEqual({ expire: [], walBefore: 1 });
    // Either rule keeps: the count keeps F1's chain although the window does not need it.
    expect(planRetention(backups, { keepFull: 2, keepDays: 1, now: at(6) })).toEqual({ expire: [], walBefore: 1 });
    // Without a time rule, the count alone.
    expect(planRetention(backups, { keepFull: 1, keepDays: null, now: at(6) }).expire).toEqual(["F1", "D2"]);
  });

  test("a backup expiry skipped (another held its lock) keeps its WAL until the next expiry", () => {
    const plan = { expire: ["F1", "I2"], walBefore: 5 };
    expect(walBeforeSparing(plan, [])).toBe(5);
    expect(walBeforeSparing(plan, [manifest("I2", { type: "incremental", startLsn: "0/2000028" })])).toBe(2);
    expect(walBeforeSparing({ expire: [], walBefore: null }, [manifest("F1", { startLsn: "0/1000028" })])).toBeNull();
  });

  test("with several repositories, one's expiry keeps what the shared spool still holds (another repository may lack it)", () => {
    const spooled = ["000000010000000000000007", "000000010000000000000008.partial", "00000002.history"];
    expect(walBeforeKeepingSpooled(9, spooled)).toBe(7);
    expect(walBeforeKeepingSpooled(5, spooled)).toBe(5);
    expect(walBeforeKeepingSpooled(9, [])).toBe(9);
    expect(walBeforeKeepingSpooled(null, spooled)).toBeNull();
  });
});

describe("expiry against a dependent's verification or restore (pure)", () => {
  test("a full is expired with its dependents in one group, the dependents first", () => {
    const backups = [
      manifest("F1"),
      manifest("D2", { type: "differential", reference: "F1" }),
      manifest("I3", { type: "incremental", reference: "D2" }),
      manifest("F4"),
      manifest("F5"),
      manifest("F6"),
    ];
    const plan = planRetention(backups, byCount(2));
    expect(plan.expire).toEqual(["F1", "D2", "I3", "F4"]);
    expect(expiryGroups(plan, backups)).toEqual([["I3", "D2", "F1"], ["F4"]]);
    // A dependent whose full is gone already (a crash between them, before groups) is a group of its own.
    expect(expiryGroups({ expire: ["I3"], walBefore: null }, backups)).toEqual([["I3"]]);
  });

  test("a chain that changed while its locks were awaited is named; the same chain is no change", () => {
    expect(chainChange(["F1", "D2"], ["F1", "D2"])).toBeNull();
    expect(chainChange(["F1", "D2"], new Error("backup D2 is not restorable: it builds on F1, which is expired"))).toContain(
      "which is expired",
    );
    expect(chainChange(["F1", "D2"], ["F9", "D2"])).toContain("F1 ← D2 to F9 ← D2");
  });
});

describe("recovery window (pure)", () => {
  const at = (n: number) => `2026-11-01T00:0${n}:00.000Z`;
  test("from the oldest backup's end to the newest archived segment; gaps on a timeline are reported", () => {
    const segments = [
      { timeline: 1, segment: 1 },
      { timeline: 1, segment: 2 },
      { timeline: 1, segment: 3 },
      { timeline: 1, segment: 6 },
      { timeline: 2, segment: 6 },
      { timeline: 2, segment: 7 },
    ];
    const window = recoveryWindow([manifest("F1", { startLsn: "0/2000028", stopLsn: "0/2000100" })], { segments, reachedAt: at(5) });
    expect(window.earliest).toEqual({ time: "2026-11-01T00:01:00.000Z", lsn: "0/2000100", timeline: 1 });
    expect(window.latest).toEqual({ time: at(5), lsn: "0/8000000", timeline: 2 });
    expect(window.gaps).toEqual([{ timeline: 1, from: "000000010000000000000004", to: "000000010000000000000005" }]);
  });

  test("the latest time is the WAL's last transaction end, never past it; none known past the backup: the backup's end", () => {
    const backups = [manifest("F1", { startLsn: "0/2000028", stopLsn: "0/2000100" })];
    const segments = [2, 3, 4].map((segment) => ({ timeline: 1, segment }));
    expect(recoveryWindow(backups, { segments, reachedAt: at(7) }).latest?.time).toBe(at(7));
    expect(recoveryWindow(backups, { segments, reachedAt: null }).latest?.time).toBe("2026-11-01T00:01:00.000Z");
    expect(recoveryWindow(backups, { segments, reachedAt: at(0) }).latest?.time).toBe("2026-11-01T00:01:00.000Z");
  });

  test("no transaction end among the newest summaries: the latest time is the newest backup's end the archive reaches, never the oldest's", () => {
    const backups = [
      manifest("F1", { startLsn: "0/1000028", stopLsn: "0/1000100" }),
      manifest("F2", { startLsn: "0/5000028", stopLsn: "0/5000100" }),
      // Its end is past the archive's (its WAL not pushed yet): not reached.
      manifest("F3", { startLsn: "0/20000028", stopLsn: "0/20000100" }),
    ];
    const segments = Array.from({ length: 30 }, (_, i) => ({ timeline: 1, segment: i + 1 }));
    expect(recoveryWindow(backups, { segments, reachedAt: null }).latest?.time).toBe("2026-11-02T00:01:00.000Z");
    expect(recoveryWindow(backups, { segments, reachedAt: at(9) }).latest?.time).toBe("2026-11-02T00:01:00.000Z");
    expect(recoveryWindow(backups, { segments, reachedAt: "2026-11-02T05:00:00.000Z" }).latest?.time).toBe("2026-11-02T05:00:00.000Z");
    // A restore to F2's own end is within the window.
    expect(chooseBackup(backups, { segments, reachedAt: null }, undefined, { kind: "time", time: "2026-11-02T00:01:00.000Z" }).id).toBe(
      "F2",
    );
  });

  test("nothing recoverable without a completed backup", () => {
    expect(recoveryWindow([], { segments: [{ timeline: 1, segment: 1 }], reachedAt: at(0) })).toEqual({
      earliest: null,
      latest: null,
      gaps: [],
    });
  });
});

describe("backup source (pure)", () => {
  const node = (name: string, role: "primary" | "replica", state: string | null, lagBytes: number | null, reachable = true) =>
    ({ name, role, reachable, replication: state ? { state, lagBytes } : null }) as never;
  const snapshot = (nodes: never[]) =>
    ({ name: "c", primary: "node1", health: "healthy", healthReasons: [], collectedAt: "t", nodes }) as never;

  test("primary policy, and the least lagging streaming replica otherwise", () => {
    const nodes = [
      node("node1", "primary", null, null),
      node("node2", "replica", "streaming", 500),
      node("node3", "replica", "streaming", 10),
    ];
    expect(chooseBackupSource(snapshot(nodes), "primary", 1000)).toEqual({ node: "node1", fromReplica: false });
    expect(chooseBackupSource(snapshot(nodes), "replica", 1000)).toEqual({ node: "node3", fromReplica: true });
  });

  test("a lagging, stopped or unreachable replica does not qualify: prefer-replica falls back, replica fails", () => {
    const nodes = [
      node("node1", "primary", null, null),
      node("node2", "replica", "streaming", 5000),
      node("node3", "replica", "stopped", 0),
      node("node4", "replica", "streaming", 0, false),
    ];
    expect(chooseBackupSource(snapshot(nodes), "prefer-replica", 1000)).toEqual({ node: "node1", fromReplica: false });
    expect(() => chooseBackupSource(snapshot(nodes), "replica", 1000)).toThrow(
      expect.objectContaining({ code: ErrorCode.PreconditionFailed }),
    );
    expect(() => chooseBackupSource(null, "primary", 1000)).toThrow(expect.objectContaining({ code: ErrorCode.ServiceUnavailable }));
  });
});

describe("CLI progress bar (pure)", () => {
  test("shows the share done, the rate, the ETA and the phase", () => {
    expect(progressBar({ phase: "copying", bytesDone: 50, bytesTotal: 100, bytesPerSecond: 2 * 1024 * 1024, etaSeconds: 3 }, 10)).toBe(
      "[#####.....]  50%  2 MB/s  ETA 3 s  copying   ",
    );
    expect(progressBar({ phase: "waiting-for-wal", bytesDone: 0, bytesTotal: 0, bytesPerSecond: 0, etaSeconds: null }, 4)).toBe(
      "[....]   0%  0 MB/s  waiting-for-wal   ",
    );
  });
});

describe("choosing the backup a restore starts from (pure)", () => {
  const backups = [
    manifest("F1", { startLsn: "0/1000028", stopLsn: "0/1000100" }),
    manifest("F3", { startLsn: "0/3000028", stopLsn: "0/3000100" }),
  ];
  const archived = { segments: [1, 2, 3, 4].map((segment) => ({ timeline: 1, segment })), reachedAt: "2026-11-05T00:00:04.000Z" };

  test("the newest completed backup that ends before a time or LSN target; the newest otherwise", () => {
    expect(chooseBackup(backups, archived, undefined, { kind: "time", time: "2026-11-02T00:00:00Z" }).id).toBe("F1");
    expect(chooseBackup(backups, archived, undefined, { kind: "lsn", lsn: "0/2000000" }).id).toBe("F1");
    expect(chooseBackup(backups, archived, undefined, { kind: "name", name: "p" }).id).toBe("F3");
    expect(chooseBackup(backups, archived, "F1", { kind: "latest" }).id).toBe("F1");
  });

  test("a named restore point: the newest backup that is consistent before recovery meets the first point of that name", () => {
    const points = [
      { name: "p", lsn: "0/2000500" },
      { name: "q", lsn: "0/3000050" }, // inside F3: F3 cannot reach it
      { name: "r", lsn: "0/3000200" },
    ];
    expect(chooseBackup(backups, archived, undefined, { kind: "name", name: "p" }, points).id).toBe("F1");
    expect(chooseBackup(backups, archived, undefined, { kind: "name", name: "q" }, points).id).toBe("F1");
    expect(chooseBackup(backups, archived, undefined, { kind: "name", name: "r" }, points).id).toBe("F3");
    // A name the summaries do not know (not summarised yet): the newest.
    expect(chooseBackup(backups, archived, undefined, { kind: "name", name: "unknown" }, points).id).toBe("F3");
  });

  test("targets outside the window and unknown backups are refused", () => {
    expect(() => chooseBackup(backups, archived, undefined, { kind: "time", time: "2026-10-01T00:00:00Z" })).toThrow(
      expect.objectContaining({
        code: ErrorCode.PreconditionFailed,
        message: expect.stringContaining("the recoverable window is 2026-11-01T00:01:00.000Z (0/1000100)"),
      }),
    );
    expect(() => chooseBackup(backups, archived, undefined, { kind: "lsn", lsn: "0/9000000" })).toThrow(
      expect.objectContaining({ code: ErrorCode.PreconditionFailed }),
    );
    expect(() => chooseBackup(backups, archived, "F9", { kind: "latest" })).toThrow(expect.objectContaining({ code: ErrorCode.NotFound }));
  });
});

describe("where a reference point is taken (pure)", () => {
  const node = (name: string, role: "primary" | "replica", state: string | null, lagBytes: number | null, reachable = true) =>
    ({ name, role, reachable, replication: state ? { state, lagBytes } : null }) as never;
  const snapshot = (nodes: never[]) =>
    ({ name: "c", primary: "node1", health: "healthy", healthReasons: [], collectedAt: "t", nodes }) as never;
  const asynchronous = { synchronous: false, eligible: [], maximumLagBytes: 1000 };

  test("never the only replica a failover could promote; then never the primary", () => {
    const one = snapshot([node("node1", "primary", null, null), node("node2", "replica", "streaming", 0)]);
    expect(chooseReferenceReplica(one, asynchronous)).toEqual({
      ok: false,
      reason: "node2 is the only replica a failover could promote: its replay is not paused",
    });
    expect(chooseReferenceReplica(snapshot([node("node1", "primary", null, null)]), asynchronous)).toEqual({
      ok: false,
      reason: "no replica is streaming",
    });
    expect(chooseReferenceReplica(null, asynchronous)).toMatchObject({ ok: false });
  });

  test("two candidates: the least lagging; a replica no failover would promote comes first", () => {
    const two = [
      node("node1", "primary", null, null),
      node("node2", "replica", "streaming", 500),
      node("node3", "replica", "streaming", 10),
    ];
    expect(chooseReferenceReplica(snapshot(two), asynchronous)).toEqual({ ok: true, node: "node3" });
    // Synchronous: only node2 holds every acknowledged commit; node3 is paused, not it.
    expect(chooseReferenceReplica(snapshot(two), { synchronous: true, eligible: ["node2"], maximumLagBytes: 0 })).toEqual({
      ok: true,
      node: "node3",
    });
    expect(chooseReferenceReplica(snapshot(two), { synchronous: true, eligible: ["node3"], maximumLagBytes: 0 })).toEqual({
      ok: true,
      node: "node2",
    });
    // Asynchronous: node2 lags past the failover's limit, so it is the one to pause.
    const lagging = [
      node("node1", "primary", null, null),
      node("node2", "replica", "streaming", 5000),
      node("node3", "replica", "streaming", 0),
    ];
    expect(chooseReferenceReplica(snapshot(lagging), asynchronous)).toEqual({ ok: true, node: "node2" });
    // A replica that does not stream is never paused, and does not count as a second candidate once unreachable.
    const down = [
      node("node1", "primary", null, null),
      node("node2", "replica", "streaming", 0),
      node("node3", "replica", "streaming", 0, false),
    ];
    expect(chooseReferenceReplica(snapshot(down), asynchronous)).toMatchObject({ ok: false });
  });

  test("a replica's reference is restored to its LSN, exclusive, on its timeline; an older one by name", () => {
    const common = { name: "relevo-x", lsn: "0/9006910", walFile: "000000010000000000000009", createdAt: "t", tables: [] };
    const paused: ReferencePoint = { ...common, kind: "replay-pause", node: "node3", timeline: 2 };
    expect(referenceRecovery(paused)).toEqual({ target: { kind: "lsn", lsn: "0/9006910", inclusive: false }, timeline: 2 });
    expect(referenceRecovery(common)).toEqual({ target: { kind: "name", name: "relevo-x" }, timeline: "latest" });
    const settings = recoverySettings(referenceRecovery(paused));
    expect(settings).toContain("recovery_target_lsn = '0/9006910'");
    expect(settings).toContain("recovery_target_inclusive = false");
    expect(settings).toContain("recovery_target_timeline = '2'");
    expect(recoverySettings({ target: { kind: "lsn", lsn: "0/1" } })).toContain("recovery_target_inclusive = true");
  });
});

describe("reference point comparison", () => {
  const recorded = [
    { database: "app", table: "public.a", rows: 2, checksum: "10" },
    { database: "app", table: "public.b", rows: 1, checksum: "5" },
    { database: "other", table: "public.a", rows: 0, checksum: "0" },
  ];
  test("equal content matches; extra tables on the copy are not compared", () => {
    expect(checksumMismatches(recorded, [...recorded, { database: "app", table: "public.new", rows: 9, checksum: "1" }])).toEqual([]);
  });
  test("a different checksum, a different count and a missing table are each named", () => {
    const actual = [
      { database: "app", table: "public.a", rows: 2, checksum: "11" },
      { database: "app", table: "public.b", rows: 2, checksum: "5" },
    ];
    expect(checksumMismatches(recorded, actual)).toEqual([
      "app: public.a differs (2 rows, expected 2)",
      "app: public.b differs (2 rows, expected 1)",
      "other: public.a missing",
    ]);
  });
});

describe("WAL segment summaries", () => {
  test("block references become ranges per relation and fork; smgr and database records are kept", () => {
    const lines = [
      "rmgr: Heap        len (rec/tot):     54/  1470, tx:        774, lsn: 0/0F0000D8, prev 0/0F000060, desc: INSERT off 12 flags 0x04, blkref #0: rel 1663/5/16414 blk 0 FPW",
      "rmgr: Heap        len (rec/tot):     54/    54, tx:        775, lsn: 0/0F0010D8, prev 0/0F0000D8, desc: UPDATE off 3 xmax 775, blkref #0: rel 1663/5/16414 blk 2, blkref #1: rel 1663/5/16414 blk 1",
      "rmgr: Heap2       len (rec/tot):     64/    64, tx:          0, lsn: 0/0F001200, prev 0/0F0010D8, desc: VISIBLE cutoff xid 775 flags 0x01, blkref #0: rel 1663/5/16414 fork vm blk 0, blkref #1: rel 1663/5/16414 blk 7",
      "rmgr: Storage     len (rec/tot):     42/    42, tx:          0, lsn: 0/0F001300, prev 0/0F001200, desc: CREATE base/5/16500",
      "rmgr: Storage     len (rec/tot):     46/    46, tx:          0, lsn: 0/0F001400, prev 0/0F001300, desc: TRUNCATE base/5/16414 to 0 blocks flags 7",
      "rmgr: Database    len (rec/tot):     42/    42, tx:        780, lsn: 0/0F001500, prev 0/0F001400, desc: CREATE copy dir 1663/1 to 1663/16390",
      "rmgr: XLOG        len (rec/tot):     98/    98, tx:          0, lsn: 0/0F001600, prev 0/0F001500, desc: RESTORE_POINT before the: migration",
      "rmgr: Transaction len (rec/tot):     34/    34, tx:        781, lsn: 0/0F001700, prev 0/0F001600, desc: COMMIT 2026-12-07 12:00:01.123456 UTC",
      "rmgr: Transaction len (rec/tot):     34/    34, tx:        782, lsn: 0/0F001800, prev 0/0F001700, desc: ABORT 2026-12-07 12:00:02.5 UTC",
      "rmgr: Standby     len (rec/tot):     50/    50, tx:          0, lsn: 0/0F001900, prev 0/0F001800, desc: RUNNING_XACTS nextXid 783",
      "pg_waldump: error: error in WAL record at 0/10000000: invalid record length",
    ];
    const builder = new SummaryBuilder();
    for (const line of lines) builder.add(line);
    const summary = builder.build("00000001000000000000000F", 1, true, null);
    // The same lines as one chunk of pg_waldump's output.
    const whole = new SummaryBuilder();
    whole.addText(lines.join("\n") + "\n");
    expect(whole.build("00000001000000000000000F", 1, true, null)).toEqual(summary);
    expect(summary).toEqual({
      formatVersion: 1,
      segment: "00000001000000000000000F",
      timeline: 1,
      blocks: {
        "1663/5/16414": {
          main: [
            [0, 2],
            [7, 7],
          ],
          vm: [[0, 0]],
        },
      },
      created: ["base/5/16500"],
      truncated: ["base/5/16414"],
      databases: ["1663/1", "1663/16390"],
      restorePoints: [{ name: "before the: migration", lsn: "0/0F001600" }],
      // The last COMMIT or ABORT's time, from the WAL: what the recoverable window's latest time is.
      lastTransactionEndAt: "2026-12-07T12:00:02.500Z",
      // Where that record ends (its LSN plus its 34 bytes): whether it is whole within the segment.
      lastTransactionRecordEnd: "0/F001822",
      records: 10,
      complete: true,
      error: null,
    });
  });

  test("the first record of the next segment is recognised in pg_waldump's output (16 MiB segments)", () => {
    const line = (lsn: string) =>
      `rmgr: XLOG        len (rec/tot):     24/    24, tx:          0, lsn: ${lsn}, prev 0/1DFFE900, desc: SWITCH`;
    expect(recordLineOfSegment(0x1e).test(line("0/1E000028"))).toBe(true);
    expect(recordLineOfSegment(0x1e).test(line("0/1DFFE900"))).toBe(false);
    // As pg_waldump 15 prints them: the low half always 8 digits.
    expect(recordLineOfSegment(0x105).test(line("1/05009818"))).toBe(true);
    expect(recordLineOfSegment(0x105).test(line("0/05009818"))).toBe(false);
    expect(recordLineOfSegment(0x100).test(line("1/00000028"))).toBe(true);
    expect(recordLineOfSegment(0x100).test(line("1/01000028"))).toBe(false);
  });

  test("segment start LSNs", () => {
    expect(segmentStartLsn(15)).toBe("0/F000000");
    expect(segmentStartLsn(256)).toBe("1/0");
    expect(segmentNumber(segmentStartLsn(1234))).toBe(1234);
  });
});

describe("standby settings for a replica seeded from the repository", () => {
  test("upstream, slot, its own WAL directory and latest timeline, quoted as postgresql.conf wants", () => {
    expect(
      standbySettings({
        conninfo: "host=h port=1 user=replicator password=it's application_name=node2",
        slot: "relevo_node2",
      }),
    ).toBe(
      [
        "primary_conninfo = 'host=h port=1 user=replicator password=it''s application_name=node2'",
        "primary_slot_name = 'relevo_node2'",
        // Its own relevo_wal/, fed by Relevo until it streams: never the repository.
        `restore_command = 'sh relevo_wal/restore-wal.sh "%f" "%p" standby'`,
        "recovery_target_timeline = 'latest'",
        "",
      ].join("\n"),
    );
  });
});
