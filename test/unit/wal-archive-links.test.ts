import { expect } from "@jest/globals";
import { spawnSync } from "node:child_process";
import { chmod, copyFile, lstat, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { configKeys } from "../../src/config/config-keys";
import { ErrorCode } from "../../src/errors";
import { copyNewerHistories, setAsideReusedTimelines } from "../../src/failover/old-primary-candidate";
import type { OperationContext } from "../../src/failover/operation-context";
import { createLogger } from "../../src/log";
import { LocalDriver } from "../../src/nodes/local/local-driver";
import { resolvePostgresIdentity, type OsIdentity } from "../../src/nodes/os-user";
import { Repository, walSpoolDir } from "../../src/storage/repository";
import { divergedFolder } from "../../src/storage/wal-archive";
import { trustOnlyTlsSource } from "../../src/tls/node-tls";
import { archiveIdentity } from "../../src/wal/archive-identity";
import { WalArchiver, type WalArchiverOptions } from "../../src/wal/wal-archiver";
import { testNode } from "../helpers/node-facts";
import { pusherFor, summarizerFor } from "../helpers/wal-pusher";
import { timelinePath } from "../../src/postgres/timelines";
import { divergedKey } from "../../src/repository/repository-layout";

/**
 * Root working in the repository's WAL archive, wal/: pg_receivewal writes
 * there as the PostgreSQL OS user, who owns it and may put a symlink at any
 * name in it (issue 14: root never follows a path that user controls). The
 * links here are planted by that very user (runuser), as a database
 * superuser's `COPY … TO PROGRAM` would, and point at root-only places.
 * Nothing may be made, moved, read or parsed through them.
 */
const asRoot = process.getuid?.() === 0 ? test : test.skip;
const logger = createLogger({ level: "silent" });
const secret = "token_key=the-key-that-mints-operator-tokens";
const homes: string[] = [];

afterEach(async () => {
  for (const home of homes.splice(0)) await rm(home, { recursive: true, force: true });
});

interface ArchiveHome {
  readonly home: string;
  readonly repository: Repository;
  readonly wal: string;
  /** A root-only directory (0700), empty. */
  readonly rootOnlyDir: string;
  /** A root-only file (0600) holding `secret`. */
  readonly rootOnlyFile: string;
  readonly postgres: OsIdentity;
}

/** A repository whose wal/ the PostgreSQL user owns (as the service makes it), beside root-only things to aim links at. */
async function archiveHome(): Promise<ArchiveHome> {
  const home = await mkdtemp(path.join(os.tmpdir(), "wal-links-"));
  homes.push(home);
  await chmod(home, 0o711); // as the data home: the PostgreSQL user may reach the repository's wal/
  const postgres = resolvePostgresIdentity("postgres")!;
  const repository = new Repository(path.join(home, "repository"), postgres, { spoolDir: walSpoolDir(home) });
  await repository.ensure();
  const rootOnlyDir = path.join(home, "root-only");
  await mkdir(rootOnlyDir, { mode: 0o700 });
  const rootOnlyFile = path.join(home, "secrets.json");
  await writeFile(rootOnlyFile, `${secret}\n`, { mode: 0o600 });
  return { home, repository, wal: repository.spoolDir, rootOnlyDir, rootOnlyFile, postgres };
}

/** Runs a command as the PostgreSQL OS user (what it may do in wal/, root is not asked). */
function asPostgres(...command: string[]): void {
  const run = spawnSync("runuser", ["-u", "postgres", "--", ...command], { encoding: "utf8" });
  if (run.status !== 0) throw new Error(`${command.join(" ")} as postgres: ${run.stderr}`);
}

/** A segment file the PostgreSQL user writes into wal/ (its content does not matter here). */
function archivedByPostgres(wal: string, name: string): void {
  asPostgres("sh", "-c", `printf 'wal' > '${path.join(wal, name)}'`);
}

const SEGMENT_1 = "000000010000000000000001";
const SEGMENT_2 = "000000010000000000000002";
const SEGMENT_3 = "000000010000000000000003";

describe("root never follows a link the PostgreSQL user planted in the WAL archive", () => {
  asRoot(
    "wal/diverged planted as a link to a root-only directory: the archiver's set-aside refuses (DATA_DIR_NOT_OURS), nothing made or moved there",
    async () => {
      const { wal, repository, rootOnlyDir } = await archiveHome();
      archivedByPostgres(wal, SEGMENT_2);
      asPostgres("ln", "-s", rootOnlyDir, path.join(wal, "diverged"));
      await expect(repository.spool.setAside([SEGMENT_2], divergedFolder())).rejects.toMatchObject({ code: ErrorCode.DataDirNotOurs });
      expect(await readdir(rootOnlyDir)).toEqual([]);
      expect(await readdir(wal)).toContain(SEGMENT_2);
    },
  );

  asRoot(
    "the set-aside folder itself (diverged/<time>) planted as a link, in a diverged/ the PostgreSQL user made: refused, nothing moved there",
    async () => {
      const { wal, repository, rootOnlyDir } = await archiveHome();
      archivedByPostgres(wal, SEGMENT_2);
      const folder = divergedFolder(new Date("2030-01-01T00:00:00Z"));
      asPostgres("mkdir", path.join(wal, "diverged"));
      asPostgres("ln", "-s", rootOnlyDir, path.join(wal, ...folder));
      await expect(repository.spool.setAside([SEGMENT_2], folder)).rejects.toMatchObject({ code: ErrorCode.DataDirNotOurs });
      expect(await readdir(rootOnlyDir)).toEqual([]);
      expect(await readdir(wal)).toContain(SEGMENT_2);
    },
  );

  asRoot(
    "the old primary's set-aside of a reused timeline, wal/diverged a link to a root-only directory: nothing goes through it, the files go to objects",
    async () => {
      const { wal, repository, rootOnlyDir } = await archiveHome();
      const reused = ["000000020000000000000002", "000000020000000000000003"];
      for (const name of [SEGMENT_1, ...reused]) archivedByPostgres(wal, name);
      asPostgres("ln", "-s", rootOnlyDir, path.join(wal, "diverged"));
      const emitted: unknown[] = [];
      // Only what setAsideReusedTimelines uses: the archive, the log, the events (recorded here).
      const context = {
        deps: { archive: repository.archivedWal, logger, events: { emit: (event: unknown) => Promise.resolve(emitted.push(event)) } },
      } as unknown as OperationContext;
      const folder = divergedFolder();
      const check = JSON.stringify({ names: [SEGMENT_1, ...reused], folder });
      await setAsideReusedTimelines(context, { node: testNode("node1"), timeline: 2, promotedNow: true, check });
      // Kept as the repository's diverged/ objects; the spool keeps no copy, and its planted link is never used.
      expect(await readdir(rootOnlyDir)).toEqual([]);
      expect((await readdir(wal)).sort()).toEqual([SEGMENT_1, "diverged"]);
      for (const name of reused) expect(await repository.objects.exists(divergedKey(0, folder.at(-1)!, name))).toBe(true);
      expect(emitted).toEqual([expect.objectContaining({ kind: "archive:timeline-reused" })]);
    },
  );

  asRoot("a set-aside of a segment planted as a link: the link itself moves, its root-only target stays where it was, unread", async () => {
    const { wal, repository, rootOnlyFile } = await archiveHome();
    asPostgres("ln", "-s", rootOnlyFile, path.join(wal, SEGMENT_2));
    const folder = divergedFolder();
    const aside = await repository.spool.setAside([SEGMENT_2], folder);
    expect(aside).toEqual({ path: path.join(wal, ...folder), moved: [SEGMENT_2] });
    expect((await lstat(path.join(wal, ...folder, SEGMENT_2))).isSymbolicLink()).toBe(true);
    expect(await readFile(rootOnlyFile, "utf8")).toBe(`${secret}\n`);
    // Made by root for root: the PostgreSQL user cannot put anything into it afterwards.
    expect((await lstat(path.join(wal, ...folder))).uid).toBe(0);
    expect((await lstat(path.join(wal, ...folder))).mode & 0o777).toBe(0o700);
  });

  asRoot(
    "a history file planted as a link to a root-only file: the pusher refuses it (never opened through the link), never reads or pushes it",
    async () => {
      const { wal, repository, rootOnlyFile } = await archiveHome();
      await writeFile(rootOnlyFile, `1\t0/3000060\t${secret}\n`, { mode: 0o600 });
      asPostgres("ln", "-s", rootOnlyFile, path.join(wal, "00000002.history"));
      const pusher = pusherFor(repository, { primaryHistory: () => timelinePath(2, `1\t0/3000060\t${secret}\n`) });
      expect(await pusher.pushPending()).toEqual([]);
      expect(await repository.archivedHistory(2)).toBeNull();
      // waitForArchived reads the timeline's history and the archive's index, nothing else of the archiver's options.
      const archiver = new WalArchiver({ repository } as unknown as WalArchiverOptions);
      await expect(archiver.waitForArchived(2, "0/3000060", "0/3000060", 200)).rejects.toMatchObject({ code: ErrorCode.Timeout });
      await expect(repository.spool.readHistory(2)).rejects.toMatchObject({ code: ErrorCode.DataDirNotOurs });
      // Nor a name that leaves wal/.
      await expect(repository.spool.read("../../secrets.json")).rejects.toThrow("not a path component");
    },
  );

  asRoot(
    "the lost primary's histories taken from the archive: one planted as a link to a root-only file is not copied into the old primary's pg_wal",
    async () => {
      const { home, wal, repository, rootOnlyFile } = await archiveHome();
      const ownHistory = "1\t0/3000060\tno recovery target specified\n";
      await writeFile(rootOnlyFile, `${ownHistory}2\t0/5000028\t${secret}\n`, { mode: 0o600 });
      const pgWal = path.join(home, "nodes", "node1", "data", "pg_wal");
      await mkdir(pgWal, { recursive: true });
      await writeFile(path.join(pgWal, "00000002.history"), ownHistory);
      asPostgres("ln", "-s", rootOnlyFile, path.join(wal, "00000003.history"));
      const driver = new LocalDriver({ home, pgBinDir: configKeys.pgBinDir.default, pgOsUser: "postgres", tls: trustOnlyTlsSource("") });
      await copyNewerHistories(
        { driver, logger, walEnd: () => Promise.resolve("0/5000028"), archive: repository.archivedWal },
        { node: testNode("node1"), lost: testNode("node2"), timeline: 2 },
      );
      const written = await Promise.all((await readdir(pgWal)).map((name) => readFile(path.join(pgWal, name), "utf8")));
      expect(written.join("")).not.toContain(secret);
      // Written from the switch point instead, as when the lost primary's history cannot be read at all.
      expect(await readFile(path.join(pgWal, "00000003.history"), "utf8")).toBe(`${ownHistory}2\t0/5000028\tpromotion of node2\n`);
      expect(await readFile(rootOnlyFile, "utf8")).toContain(secret);
    },
  );

  asRoot(
    "the archive's identity and listing: a segment name planted as a link to a root-only file is neither parsed nor listed as archived",
    async () => {
      const { wal, repository, rootOnlyFile } = await archiveHome();
      // A root-only file that reads as a WAL segment's long page header of system identifier 7777.
      const header = Buffer.alloc(64);
      header.writeUInt16LE(0xd110, 0);
      header.writeUInt16LE(0x0002, 2);
      header.writeBigUInt64LE(7777n, 24);
      header.writeUInt32LE(16 << 20, 32);
      await writeFile(rootOnlyFile, header, { mode: 0o600 });
      asPostgres("ln", "-s", rootOnlyFile, path.join(wal, SEGMENT_3));
      expect(await archiveIdentity(repository)).toBeNull();
      expect(await repository.archivedSegmentList()).toEqual([]);
    },
  );

  asRoot(
    "the WAL summaries: pg_waldump (run as root) reads a segment the archive holds, and never one planted as a link to a root-only segment",
    async () => {
      const { home, wal, repository } = await archiveHome();
      // A real segment: initdb's first, written by the PostgreSQL user.
      const cluster = path.join(home, "cluster");
      await mkdir(cluster, { mode: 0o700 });
      await chmod(cluster, 0o700);
      spawnSync("chown", ["postgres:", cluster]);
      asPostgres(path.join(configKeys.pgBinDir.default, "initdb"), "-D", path.join(cluster, "data"), "-A", "trust", "--no-sync");
      const segment = path.join(cluster, "data", "pg_wal", SEGMENT_1);
      asPostgres("cp", segment, path.join(wal, SEGMENT_1));
      const rootOnlySegment = path.join(home, "root-only", SEGMENT_1);
      await copyFile(segment, rootOnlySegment);
      await chmod(rootOnlySegment, 0o600);
      asPostgres("ln", "-s", rootOnlySegment, path.join(wal, "000000020000000000000001"));

      const scratchDir = path.join(home, "tmp");
      const summarizer = summarizerFor(repository, scratchDir);
      const archived = await summarizer.summarizeUpTo(1, 1, "0/1000400");
      expect(archived).toMatchObject({ complete: true, error: null });
      expect(archived.records).toBeGreaterThan(0);
      const planted = await summarizer.summarizeUpTo(2, 1, "0/1000400");
      expect(planted).toMatchObject({ complete: false, records: 0 });
      expect(planted.error).toContain("symlink");
      // pg_waldump's directory of links was on the host (the repository may be a bucket), and is gone.
      expect(await readdir(scratchDir)).toEqual([]);
      expect(await readdir(repository.root)).not.toContain("wal-summary");
    },
  );
});
