import { expect } from "@jest/globals";
import { initialisationDecision } from "../../src/cluster/cluster-identity";
import { initialState } from "../../src/failover/cluster-state";
import { rebuiltState } from "../../src/failover/rebuilt-cluster";
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { foreignEntries } from "../../src/nodes/local/node-folder";
import { nodeLoss, type NodeLossFacts } from "../../src/restore/disaster-recovery";
import { assertNotMemberDirectory, restoreTargetAccepted } from "../../src/restore/copy-placement";
import { resolveRealPath } from "../../src/util/real-path";
import { ErrorCode, RelevoError } from "../../src/errors";
import { mkdir, mkdtemp, realpath, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { connectFailure, probePort, sslRequestReply } from "../../src/postgres/port-probe";
import { findFreePort } from "../../src/util/ports";
import { foreignWalRefusal, manifestIdentity } from "../../src/wal/archive-identity";

describe("a lost cluster is rebuilt, never replaced (pure)", () => {
  /** A stopped node with no cluster, nothing in its data directory or beside it, nothing on its port. */
  const stopped: NodeLossFacts = { phase: "stopped", hasVersion: false, dataEntries: 0, foreignRemains: [], port: { answer: "nothing" } };

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
    expect(nodeLoss({ ...stopped, phase: "absent" })).toEqual({ phase: "lost" });
    expect(nodeLoss(stopped)).toEqual({ phase: "lost-with-remains" });
    expect(nodeLoss({ ...stopped, hasVersion: true, dataEntries: 20 })).toMatchObject({ phase: "survives" });
    expect(nodeLoss({ ...stopped, phase: "paused" })).toMatchObject({ phase: "survives" });
    // What relevo up calls DATA_DIR_NOT_OURS (files, no PG_VERSION) is never deleted: its remains are set aside.
    expect(nodeLoss({ ...stopped, dataEntries: 3 })).toEqual({ phase: "damaged", why: "its data directory held files but no PG_VERSION" });
    // A server still on it, by its pid file or its port, is no loss at all.
    expect(nodeLoss({ ...stopped, phase: "running", dataEntries: 3 })).toEqual({ phase: "survives", why: "its server is running" });
    expect(nodeLoss({ ...stopped, dataEntries: 3, port: { answer: "postgres" } })).toEqual({
      phase: "survives",
      why: "a PostgreSQL server answers on its port",
    });
    // Without storage at all, the port is asked too: a server whose whole folder went from under it still runs.
    expect(nodeLoss({ ...stopped, phase: "absent", port: { answer: "postgres" } })).toMatchObject({ phase: "survives" });
  });

  test("a lost node's storage holding anything Relevo did not put there is set aside, never removed, even with its data directory gone", () => {
    // The operator moved data/ to data.broken while troubleshooting: the data directory is missing, the folder is not Relevo's alone.
    expect(nodeLoss({ ...stopped, foreignRemains: ["/h/nodes/node1/data.broken"] })).toEqual({
      phase: "damaged",
      why: "its storage held what Relevo did not put there (/h/nodes/node1/data.broken)",
    });
    // A server answering still wins: nothing is touched at all.
    expect(nodeLoss({ ...stopped, foreignRemains: ["/h/nodes/node1/x"], port: { answer: "postgres" } })).toMatchObject({
      phase: "survives",
    });
  });

  test("a port that answers, but not as PostgreSQL, or cannot be asked, leaves the node undecided, saying why: never taken for lost", () => {
    expect(nodeLoss({ ...stopped, port: { answer: "other", detail: "it answered with byte 0x53" } })).toEqual({
      phase: "undecided",
      why: "something answers on its port, but not as PostgreSQL: it answered with byte 0x53",
    });
    expect(
      nodeLoss({ ...stopped, phase: "absent", port: { answer: "unknown", detail: "the connection failed with EHOSTUNREACH" } }),
    ).toEqual({
      phase: "undecided",
      why: "whether a server answers on its port cannot be told: the connection failed with EHOSTUNREACH",
    });
    expect(nodeLoss({ ...stopped, phase: "absent" })).toEqual({ phase: "lost" });
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

describe("what answers on a lost node's port: a connection and PostgreSQL's SSLRequest, not a bind test", () => {
  const servers: Server[] = [];
  const sockets: Socket[] = [];
  afterAll(async () => {
    sockets.forEach((socket) => socket.destroy());
    await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  });
  /** A real server on a loopback port that does `onConnection` with each client. */
  const listening = async (onConnection: (socket: Socket) => void): Promise<number> => {
    const server = createServer((socket) => {
      sockets.push(socket);
      onConnection(socket);
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return (server.address() as AddressInfo).port;
  };

  test("nothing listening: the connection is refused, and only that says nothing answers", async () => {
    expect(await probePort("127.0.0.1", await findFreePort("127.0.0.1"), { timeoutMs: 2000 })).toEqual({ answer: "nothing" });
  });

  test("another program on the port: it answers, but not as PostgreSQL (an SSH banner, though it starts with 'S')", async () => {
    const port = await listening((socket) => socket.end("SSH-2.0-OpenSSH_9.2\r\n"));
    expect(await probePort("127.0.0.1", port, { timeoutMs: 2000 })).toEqual({
      answer: "other",
      detail: "it answered PostgreSQL's SSLRequest with 21 bytes starting 0x53, not as PostgreSQL",
    });
  });

  test("a program that accepts and says nothing (a frozen server looks the same): not PostgreSQL's answer, after the timeout", async () => {
    const port = await listening(() => undefined);
    const probe = await probePort("127.0.0.1", port, { timeoutMs: 300 });
    expect(probe.answer).toBe("other");
    expect(probe.answer === "other" ? probe.detail : "").toContain("did not answer PostgreSQL's SSLRequest within 300 ms");
  });

  test("an address that cannot be reached or resolved: unknown, with the reason, never 'a server answers'", async () => {
    expect(await probePort("no-such-host.invalid", 5432, { timeoutMs: 2000 })).toMatchObject({ answer: "unknown" });
    // A bind error (what isPortFree reads as "in use") is no answer from a server: only a refusal or a reply decides.
    expect(connectFailure("EADDRNOTAVAIL")).toEqual({ answer: "unknown", detail: "the connection failed with EADDRNOTAVAIL" });
    expect(connectFailure("ECONNREFUSED")).toEqual({ answer: "nothing" });
  });

  test("PostgreSQL's replies to an SSLRequest: the one byte 'S' or 'N', or an ErrorResponse; anything else, or none, is not PostgreSQL", () => {
    for (const reply of ["S", "N"]) expect(sslRequestReply(Buffer.from(reply))).toEqual({ answer: "postgres" });
    const error = Buffer.concat([Buffer.from("E"), Buffer.from([0, 0, 0, 12]), Buffer.from("SFATAL\0\0")]);
    expect(sslRequestReply(error)).toEqual({ answer: "postgres" });
    expect(sslRequestReply(Buffer.from("SSH-2.0"))).toMatchObject({ answer: "other" });
    expect(sslRequestReply(Buffer.from("H"))).toMatchObject({ answer: "other" });
    expect(sslRequestReply(null)).toMatchObject({ answer: "other" });
  });
});
