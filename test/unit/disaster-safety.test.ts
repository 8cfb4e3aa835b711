import { expect } from "@jest/globals";
import { initialisationDecision } from "../../src/cluster/cluster-identity";
import { initialState } from "../../src/failover/cluster-state";
import { rebuiltState } from "../../src/failover/rebuilt-cluster";
import { foreignEntries } from "../../src/nodes/local/node-folder";
import { nodeLoss } from "../../src/restore/disaster-recovery";
import { assertNotMemberDirectory, restoreTargetAccepted } from "../../src/restore/copy-placement";
import { resolveRealPath } from "../../src/util/real-path";
import { ErrorCode, RelevoError } from "../../src/errors";
import { mkdir, mkdtemp, realpath, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { foreignWalRefusal, manifestIdentity } from "../../src/wal/archive-identity";

describe("a lost cluster is rebuilt, never replaced (pure)", () => {
  test("relevo up initialises a data home that knows no cluster; one that does is refused, naming restore --cluster and the start-over flag", () => {
    expect(initialisationDecision(null, { newCluster: false })).toEqual({ phase: "initialise" });
    const known = { systemIdentifier: "7716129010877082573", evidence: ["2 completed backups in /r/backups"] };
    const refused = initialisationDecision(known, { newCluster: false });
    const message = refused.phase === "refuse" ? refused.message : "";
    expect(refused.phase).toBe("refuse");
    expect(message).toContain("relevo restore --cluster");
    expect(message).toContain("relevo up --new-cluster");
    expect(message).toContain("2 completed backups in /r/backups");
    expect(initialisationDecision(known, { newCluster: true })).toEqual({ phase: "start-over", known });
  });

  test("a node is lost for restore --cluster without storage, or with its data directory missing or empty and no server; otherwise it survives", () => {
    const stopped = { phase: "stopped" as const, hasVersion: false, dataEntries: 0, foreignRemains: [], portAnswers: false };
    expect(nodeLoss({ ...stopped, phase: "absent" })).toEqual({ phase: "lost" });
    expect(nodeLoss(stopped)).toEqual({ phase: "lost-with-remains" });
    expect(nodeLoss({ ...stopped, hasVersion: true, dataEntries: 20 })).toMatchObject({ phase: "survives" });
    expect(nodeLoss({ ...stopped, phase: "paused" })).toMatchObject({ phase: "survives" });
    // What relevo up calls DATA_DIR_NOT_OURS (files, no PG_VERSION) is never deleted: its remains are set aside.
    expect(nodeLoss({ ...stopped, dataEntries: 3 })).toEqual({ phase: "damaged", why: "its data directory held files but no PG_VERSION" });
    // A server still on it, by its pid file or its port, is no loss at all.
    expect(nodeLoss({ ...stopped, phase: "running", dataEntries: 3 })).toEqual({ phase: "survives", why: "its server is running" });
    expect(nodeLoss({ ...stopped, dataEntries: 3, portAnswers: true })).toEqual({ phase: "survives", why: "a server answers on its port" });
  });

  test("a lost node's storage holding anything Relevo did not put there is set aside, never removed, even with its data directory gone", () => {
    const stopped = { phase: "stopped" as const, hasVersion: false, dataEntries: 0, foreignRemains: [], portAnswers: false };
    // The operator moved data/ to data.broken while troubleshooting: the data directory is missing, the folder is not Relevo's alone.
    expect(nodeLoss({ ...stopped, foreignRemains: ["/h/nodes/node1/data.broken"] })).toEqual({
      phase: "damaged",
      why: "its storage held what Relevo did not put there (/h/nodes/node1/data.broken)",
    });
    // A server answering still wins: nothing is touched at all.
    expect(nodeLoss({ ...stopped, foreignRemains: ["/h/nodes/node1/x"], portAnswers: true })).toMatchObject({ phase: "survives" });
  });

  test("the local driver's own files in a node folder are data/ (a directory) and postgresql.log (a file); anything else is foreign", () => {
    expect(foreignEntries([])).toEqual([]);
    expect(
      foreignEntries([
        { name: "data", type: "directory" },
        { name: "postgresql.log", type: "file" },
      ]),
    ).toEqual([]);
    expect(
      foreignEntries([
        { name: "postgresql.log", type: "file" },
        { name: "pg_wal.copy", type: "directory" },
        { name: "data.broken", type: "directory" },
        { name: "notes.txt", type: "file" },
      ]),
    ).toEqual(["data.broken", "notes.txt", "pg_wal.copy"]);
    // Not the driver's layout: a data/ that is a symlink (moved to another disk) or a file, a log that is a directory.
    expect(
      foreignEntries([
        { name: "data", type: "symlink" },
        { name: "postgresql.log", type: "directory" },
      ]),
    ).toEqual(["data", "postgresql.log"]);
    expect(foreignEntries([{ name: "data", type: "file" }])).toEqual(["data"]);
  });

  test("a restore writes only into an absent node; disaster recovery alone also into existing storage with an empty data directory", () => {
    expect(restoreTargetAccepted({ phase: "absent", dataEntries: null, acceptEmptyStorage: false })).toBe(true);
    expect(restoreTargetAccepted({ phase: "stopped", dataEntries: 0, acceptEmptyStorage: false })).toBe(false);
    // An adopted container whose volume destroy() emptied: rebuilt in place by disaster recovery.
    expect(restoreTargetAccepted({ phase: "stopped", dataEntries: 0, acceptEmptyStorage: true })).toBe(true);
    expect(restoreTargetAccepted({ phase: "stopped", dataEntries: 3, acceptEmptyStorage: true })).toBe(false);
    expect(restoreTargetAccepted({ phase: "stopped", dataEntries: null, acceptEmptyStorage: true })).toBe(false);
    expect(restoreTargetAccepted({ phase: "running", dataEntries: 0, acceptEmptyStorage: true })).toBe(false);
  });

  test("the archiver refuses WAL of another system identifier than the archive's, and only that", () => {
    const archive = { systemIdentifier: "111", source: "WAL segment 000000020000000000000005" };
    expect(foreignWalRefusal({ name: "node1", systemIdentifier: "111" }, archive, "/r/wal")).toBeNull();
    expect(foreignWalRefusal({ name: "node1", systemIdentifier: "222" }, null, "/r/wal")).toBeNull();
    const refusal = foreignWalRefusal({ name: "node1", systemIdentifier: "222" }, archive, "/r/wal");
    expect(refusal).toContain("node1");
    expect(refusal).toContain("222");
    expect(refusal).toContain("111 (WAL segment 000000020000000000000005 in /r/wal)");
  });

  test("the archive's identity from manifests: the newest completed one with a system identifier, never a failed backup's empty one", () => {
    const completed = { id: "20260101T000000Z-F", status: "completed" as const, systemIdentifier: "111" };
    // Failed before it reached the primary: written with no system identifier.
    const failed = { id: "20260102T000000Z-I", status: "failed" as const, systemIdentifier: "" };
    expect(manifestIdentity([completed, failed])).toEqual({ systemIdentifier: "111", source: "backup 20260101T000000Z-F" });
    expect(manifestIdentity([failed])).toBeNull();
    expect(manifestIdentity([{ ...completed, systemIdentifier: "" }])).toBeNull();
    // And an empty identifier is never a reason to refuse a primary.
    expect(
      foreignWalRefusal({ name: "node1", systemIdentifier: "111" }, { systemIdentifier: "", source: "backup x" }, "/r/wal"),
    ).toBeNull();
  });

  test("a rebuilt cluster's recorded state: the restored primary, nothing fenced, no synchronous set, the epoch going on", () => {
    const old = {
      ...initialState("node2"),
      epoch: 4,
      fenced: ["node1"],
      syncSet: ["node1"],
      eligible: ["node1"],
      joining: { node3: "0/5" },
    };
    expect(rebuiltState(old, "node1")).toEqual({ primary: "node1", epoch: 5, fenced: [], syncSet: [], eligible: [], joining: {} });
    expect(rebuiltState(null, "node1").epoch).toBe(1);
  });
});

describe("a restored copy's directory is never a member's, however spelled", () => {
  let root = "";
  beforeAll(async () => {
    root = await realpath(await mkdtemp(path.join(tmpdir(), "relevo-copy-place-")));
    await mkdir(path.join(root, "home", "nodes", "node1", "data"), { recursive: true });
    // node2's directory is absent, as while a reseed makes it again.
    await symlink(path.join(root, "home", "nodes"), path.join(root, "nodes-link"));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  const members = async () => [
    { name: "node1", directory: await resolveRealPath(path.join(root, "home", "nodes", "node1")) },
    { name: "node2", directory: await resolveRealPath(path.join(root, "home", "nodes", "node2")) },
  ];
  const refusal = async (to: string) => {
    try {
      assertNotMemberDirectory(await resolveRealPath(to), await members());
      return null;
    } catch (error) {
      return error as RelevoError;
    }
  };

  test("a member's directory, through a link or `..`, present or absent, inside or around it, is TARGET_IS_MEMBER", async () => {
    for (const to of [
      path.join(root, "home", "nodes", "node1"),
      path.join(root, "nodes-link", "node1"),
      path.join(root, "nodes-link", "node2"), // absent: resolved through its existing parent
      path.join(root, "home", "nodes", "node3", "..", "node2"),
      path.join(root, "nodes-link", "node1", "data"),
      path.join(root, "nodes-link", "node2", "copy"),
    ]) {
      const error = await refusal(to);
      expect(error).toBeInstanceOf(RelevoError);
      expect(error).toMatchObject({
        code: ErrorCode.TargetIsMember,
        message: expect.stringMatching(/the node directory of node[12], a member/),
      });
    }
    expect(await refusal(path.join(root, "nodes-link"))).toMatchObject({
      code: ErrorCode.TargetIsMember,
      message: expect.stringContaining(" holds "),
    });
  });

  test("a directory beside the members (a name that merely starts like one) is accepted", async () => {
    expect(await refusal(path.join(root, "nodes-link", "node10"))).toBeNull();
    expect(await refusal(path.join(root, "nodes-link", "node1-copy"))).toBeNull();
    expect(await refusal(path.join(root, "elsewhere", "copy"))).toBeNull();
  });
});
