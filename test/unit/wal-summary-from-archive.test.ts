import { expect } from "@jest/globals";
import { spawnSync } from "node:child_process";
import { copyFile, mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { Readable } from "node:stream";
import { DirectoryStore } from "../../src/repository/directory-store";
import { RepositoryKeyring } from "../../src/repository/repository-keyring";
import { archiveKey, walSummaryKey } from "../../src/repository/repository-layout";
import { HEADER_SIZE } from "../../src/repository/object-codec";
import { Repository, walSpoolDir } from "../../src/storage/repository";
import { tempHome } from "../helpers/home";
import { pusherFor, summarizerFor } from "../helpers/wal-pusher";
import { realWalSegments } from "../helpers/wal-segment";

/**
 * A segment pushed into the repository's archive and no longer in the
 * spool (the spool lost or wiped, a legacy wal/ drained, a segment trimmed
 * before its summary was complete) is summarised from its object: fetched
 * through the codec (checked, decrypted) into root's scratch, read there by
 * pg_waldump, and the scratch left empty.
 */
const asRoot = process.getuid?.() === 0 ? test : test.skip;
const S1 = "000000010000000000000001";
const S2 = "000000010000000000000002";
const S3 = "000000010000000000000003";
const TEST_SCRYPT = { N: 2 ** 12, r: 8, p: 1 };

interface ArchiveHome {
  readonly home: string;
  readonly repository: Repository;
  readonly scratch: string;
  /** Where the real segments are (a cluster's pg_wal). */
  readonly wal: string;
}

async function archiveHome(label: string, cipherPass = ""): Promise<ArchiveHome> {
  const home = await tempHome(label);
  const root = path.join(home, "repository");
  await mkdir(root, { recursive: true, mode: 0o700 });
  // The keys made by one maker (the service makes them under its Redis lock, which this test has no need of).
  const keyring =
    cipherPass === ""
      ? undefined
      : await RepositoryKeyring.open(new DirectoryStore(root), {
          cipherPass,
          variable: "RELEVO_REPO1_CIPHER_PASS",
          create: true,
          lock: (work) => work(),
          scrypt: TEST_SCRYPT,
        });
  const repository = new Repository(root, null, { spoolDir: walSpoolDir(home), keyring });
  await repository.ensure();
  return { home, repository, scratch: path.join(home, "tmp"), wal: realWalSegments(home) };
}

/** The segments received into the spool, pushed into the archive, then gone from the spool. */
async function pushedAndUnspooled({ repository, wal }: ArchiveHome, names: readonly string[]): Promise<void> {
  for (const name of names) await copyFile(path.join(wal, name), path.join(repository.spoolDir, name));
  expect(await pusherFor(repository).pushPending()).toEqual([...names].sort());
  for (const name of names) await repository.spool.remove(name);
  expect(await repository.spool.names()).toEqual([]);
}

/** `content` put into the repository's archive as `name` (as the pusher does, from another spool). */
async function archived(repository: Repository, name: string, content: Buffer): Promise<void> {
  await repository.objects.putStream(archiveKey(0, name), Readable.from([content]));
  repository.archive.added(name);
}

describe("summaries of segments the spool no longer has", () => {
  asRoot.each([
    ["unencrypted", ""],
    ["encrypted", "the summaries test's pass"],
  ])(
    "%s: the pass summarises pushed segments from their objects, as from the spool; the scratch is left empty",
    async (label, cipherPass) => {
      const archive = await archiveHome(`summary-archive-${label}`, cipherPass);
      await pushedAndUnspooled(archive, [S1, S2, S3]);
      const summarizer = summarizerFor(archive.repository, archive.scratch);

      // 3 is the newest and has no successor: not summarised yet.
      expect(await summarizer.summarizePending()).toEqual([S1, S2]);
      const [first, second] = [(await summarizer.read(S1))!, (await summarizer.read(S2))!];
      expect(first).toMatchObject({ segment: S1, complete: true, error: null });
      expect(second).toMatchObject({ segment: S2, complete: true, error: null });
      expect(Object.keys(first.blocks).length).toBeGreaterThan(0);
      expect((await stat(archive.scratch)).mode & 0o777).toBe(0o700);
      expect(await readdir(archive.scratch)).toEqual([]);

      // The same summaries as pg_waldump makes from the spool.
      const control = await archiveHome(`summary-spool-${label}`);
      for (const name of [S1, S2, S3]) await copyFile(path.join(archive.wal, name), path.join(control.repository.spoolDir, name));
      const fromSpool = summarizerFor(control.repository, control.scratch);
      expect(await fromSpool.summarizePending()).toEqual([S1, S2]);
      expect(first).toEqual(await fromSpool.read(S1));
      expect(second).toEqual(await fromSpool.read(S2));
    },
    120_000,
  );

  asRoot(
    "a backup's summaries (summariesOf) read the archive for what the spool lacks and store them; scratch left by a dead process goes",
    async () => {
      const archive = await archiveHome("summary-backup");
      await pushedAndUnspooled(archive, [S1, S2]);
      await copyFile(path.join(archive.wal, S3), path.join(archive.repository.spoolDir, S3));
      // A summariser killed mid-fetch and mid-pg_waldump left these.
      const dead = spawnSync("true").pid;
      await mkdir(archive.scratch, { recursive: true });
      await writeFile(path.join(archive.scratch, `wal-fetch-${dead}-0badc0de-${S1}`), "torn");
      await mkdir(path.join(archive.scratch, `waldump-${dead}-0badc0de`));
      const summarizer = summarizerFor(archive.repository, archive.scratch);

      const summaries = await summarizer.summariesOf([
        { timeline: 1, segment: 1 },
        { timeline: 1, segment: 2 },
      ]);
      expect(summaries.map((summary) => [summary.segment, summary.complete])).toEqual([
        [S1, true],
        [S2, true],
      ]);
      expect(await archive.repository.objects.readJson(walSummaryKey(0, S2))).toEqual(summaries[1]);
      expect(await readdir(archive.scratch)).toEqual([]);
    },
    120_000,
  );

  asRoot(
    "a timeline's last segment stored incomplete is retried from the archive once its successor is pushed, not before",
    async () => {
      const archive = await archiveHome("summary-retry");
      const { repository } = archive;
      // Timeline 1 ends with segment 1; timeline 2 began (its 3 is archived), its 2 not yet.
      await pushedAndUnspooled(archive, [S1]);
      await archived(repository, "000000020000000000000003", Buffer.from("not read here"));
      const summarizer = summarizerFor(repository, archive.scratch);

      expect(await summarizer.summarizePending()).toEqual([S1]);
      expect(await summarizer.read(S1)).toMatchObject({ complete: false });
      // Nothing new to read it with: not read again at every pass.
      expect(await summarizer.summarizePending()).toEqual([]);

      // Timeline 2's segment 2 (the same records as timeline 1's up to the branch) is pushed: read on into it.
      await archived(repository, "000000020000000000000002", await readFile(path.join(archive.wal, S2)));
      expect(await summarizer.summarizePending()).toContain(S1);
      expect(await summarizer.read(S1)).toMatchObject({ complete: true, error: null });
      expect(await readdir(archive.scratch)).toEqual([]);
    },
    120_000,
  );

  asRoot(
    "a later process retries an incomplete summary an earlier one stored",
    async () => {
      const archive = await archiveHome("summary-retry-restart");
      await pushedAndUnspooled(archive, [S1]);
      await archive.repository.objects.writeJson(walSummaryKey(0, S1), {
        ...(await summarizerFor(archive.repository, archive.scratch).summarizeUpTo(1, 1, "0/1000400")),
        complete: false,
        error: "stored by an earlier process",
      });
      await archived(archive.repository, "000000020000000000000002", await readFile(path.join(archive.wal, S2)));

      expect(await summarizerFor(archive.repository, archive.scratch).summarizePending()).toContain(S1);
      expect(await archive.repository.objects.readJson(walSummaryKey(0, S1))).toMatchObject({ complete: true, error: null });
    },
    120_000,
  );

  asRoot(
    "a segment whose object is corrupt: no summary is stored (the next pass tries again), a backup's is incomplete saying why",
    async () => {
      const archive = await archiveHome("summary-corrupt");
      await pushedAndUnspooled(archive, [S1, S2]);
      const file = path.join(archive.repository.root, archiveKey(0, S1));
      const damaged = await readFile(file);
      damaged[HEADER_SIZE + 4096] = damaged[HEADER_SIZE + 4096]! ^ 0x01;
      await writeFile(file, damaged);
      const summarizer = summarizerFor(archive.repository, archive.scratch);

      expect(await summarizer.summarizePending()).toEqual([]);
      expect(await summarizer.read(S1)).toBeNull();
      const summary = await summarizer.summaryOf(1, 1);
      expect(summary).toMatchObject({ complete: false });
      expect(summary.error).toContain("the archive could not be read");
      expect(await summarizer.read(S1)).toBeNull();
      expect(await readdir(archive.scratch)).toEqual([]);
      await rm(file);
    },
    120_000,
  );
});
