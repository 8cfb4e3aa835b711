import { expect } from "@jest/globals";
import { existsSync, readFileSync, readlinkSync } from "node:fs";
import { chmod, mkdtemp, open, readFile, readdir, stat, symlink, writeFile, type FileHandle } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { isExcluded } from "../../src/backup/exclusions";
import { recordIdentity } from "../../src/cluster/cluster-identity";
import { loadConfig } from "../../src/config/config";
import { renameCommand, writeCommand } from "../../src/nodes/docker/file-commands";
import { LocalDriver } from "../../src/nodes/local/local-driver";
import { writeFileAtomic } from "../../src/nodes/local/local-files";
import { trustOnlyTlsSource } from "../../src/tls/node-tls";
import { markFenced } from "../../src/postgres/fence-marker";
import { configureStoppedStandby } from "../../src/postgres/replication-config";
import { loadOrCreateSecrets } from "../../src/secrets/secrets-store";
import { Repository, walSpoolDir } from "../../src/storage/repository";
import { removeAbandonedTemporaries, replaceFileDurably } from "../../src/util/durable-file";
import { projectRoot } from "../../src/util/project-root";
import { manifest as manifestFixture } from "../helpers/manifest-fixture";

/**
 * A file Relevo acts on after a crash (the fence marker, standby.signal, a
 * restored copy's settings, secrets.json) is fsynced, renamed into place,
 * and its directory fsynced. Observed on real files: every fsync is
 * recorded (calling through) with what its descriptor names and what the
 * destination holds at that moment, so the order shows without a tracer.
 */
interface Flush {
  /** What the descriptor fsynced names (/proc/self/fd). */
  readonly flushed: string;
  /** Whether, at that moment, each watched file already held its new content. */
  readonly published: Readonly<Record<string, boolean>>;
}

async function recordingFlushes(watched: Record<string, string>): Promise<{ flushes: Flush[]; stop: () => void }> {
  const probe = await open(__filename, "r");
  const prototype = Object.getPrototypeOf(probe) as FileHandle;
  await probe.close();
  // Called through, on the handle the code under test fsyncs.
  const original = Object.getOwnPropertyDescriptor(prototype, "sync")!.value as (this: FileHandle) => Promise<void>;
  const flushes: Flush[] = [];
  const spy = jest.spyOn(prototype, "sync").mockImplementation(function (this: FileHandle) {
    const published = Object.fromEntries(
      Object.entries(watched).map(([file, content]) => [file, existsSync(file) && readFileSync(file, "utf8").includes(content)]),
    );
    flushes.push({ flushed: readlinkSync(`/proc/self/fd/${this.fd}`), published });
    return original.call(this);
  });
  return { flushes, stop: () => spy.mockRestore() };
}

/** The flushes of one durable replace of `file`: its temporary file before it is in place, then its directory after. */
function durableReplaceOf(file: string): unknown[] {
  return [
    {
      flushed: expect.stringMatching(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\.relevo-tmp-`)),
      published: { [file]: false },
    },
    { flushed: path.dirname(file), published: { [file]: true } },
  ];
}

async function scratch(): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), "durable-file-"));
}

describe("files Relevo acts on after a crash are written durably", () => {
  test("the local driver: a fence's postgresql.auto.conf and marker, and standby.signal, are each fsynced, renamed, then their directory fsynced", async () => {
    const home = await scratch();
    await chmod(home, 0o711); // the PostgreSQL user traverses it, as it does a data home
    const config = loadConfig({ RELEVO_HOME: home });
    const driver = new LocalDriver({ home, pgBinDir: config.pgBinDir, pgOsUser: config.pgOsUser, tls: trustOnlyTlsSource("") });
    const node = { name: "node1", host: "127.0.0.1", port: 1 };
    await driver.provision(node);
    await driver.makeDirectory(node, ".");
    const data = driver.dataDirectory(node);
    const autoConf = path.join(data, "postgresql.auto.conf");
    const marker = path.join(data, "relevo.fenced.json");
    const signal = path.join(data, "standby.signal");

    const fencing = await recordingFlushes({ [autoConf]: "default_transaction_read_only", [marker]: "a crash test" });
    try {
      await markFenced(driver, node, "a crash test");
    } finally {
      fencing.stop();
    }
    expect(
      fencing.flushes.map((flush) => ({ flushed: flush.flushed, published: { [autoConf]: flush.published[autoConf] } })).slice(0, 2),
    ).toEqual(durableReplaceOf(autoConf));
    expect(fencing.flushes.map((flush) => ({ flushed: flush.flushed, published: { [marker]: flush.published[marker] } })).slice(2)).toEqual(
      durableReplaceOf(marker),
    );

    const standby = await recordingFlushes({ [signal]: "" });
    try {
      await configureStoppedStandby(driver, node, { name: "node2", host: "127.0.0.1", port: 2 }, "password");
    } finally {
      standby.stop();
    }
    expect(standby.flushes.slice(-2)).toEqual(durableReplaceOf(signal));
  });

  test("a directory made on the way to a durable file has its entry fsynced in its parent first: a new backup's manifest, a node's file", async () => {
    // The repository never set up (ensure): repository/ and manifests/ are both made by writeManifest (manifests/<id>).
    const top = await scratch();
    const root = path.join(top, "repository");
    const id = "20261101T000000Z-F";
    const manifestFile = path.join(root, "manifests", id);
    const backup = await recordingFlushes({ [manifestFile]: id });
    try {
      await new Repository(root, null, { spoolDir: walSpoolDir(path.dirname(root)) }).writeManifest(manifestFixture(id));
    } finally {
      backup.stop();
    }
    const directoryEntry = (parent: string, file: string) => ({ flushed: parent, published: { [file]: false } });
    expect(backup.flushes).toEqual([
      directoryEntry(top, manifestFile),
      directoryEntry(root, manifestFile),
      ...durableReplaceOf(manifestFile),
    ]);

    // The local driver's durable write below a node's folder, through the guarded walk (local-files' creatingParents).
    const anchor = await scratch();
    const nodeFile = path.join(anchor, "made", "on-the-way", "standby.signal");
    const node = await recordingFlushes({ [nodeFile]: "written" });
    try {
      await writeFileAtomic({ anchor, below: ["made", "on-the-way", "standby.signal"] }, "written", { mode: 0o600, identity: null });
    } finally {
      node.stop();
    }
    expect(node.flushes).toEqual([
      directoryEntry(anchor, nodeFile),
      directoryEntry(path.join(anchor, "made"), nodeFile),
      ...durableReplaceOf(nodeFile),
    ]);
  });

  test("secrets.json and cluster-identity.json: fsynced, renamed, directory fsynced; mode 0600; no temporary file left", async () => {
    const home = await scratch();
    const secretsFile = path.join(home, "secrets.json");
    const secrets = await recordingFlushes({ [secretsFile]: "tokenKey" });
    try {
      await loadOrCreateSecrets(home);
    } finally {
      secrets.stop();
    }
    expect(secrets.flushes).toEqual(durableReplaceOf(secretsFile));

    const identityFile = path.join(home, "cluster-identity.json");
    const identity = await recordingFlushes({ [identityFile]: "7301234567890123456" });
    try {
      await recordIdentity(home, "relevo", "7301234567890123456");
    } finally {
      identity.stop();
    }
    expect(identity.flushes).toEqual(durableReplaceOf(identityFile));
    expect((await stat(secretsFile)).mode & 0o777).toBe(0o600);
    expect((await readdir(home)).filter((name) => name.includes("relevo-tmp"))).toEqual([]);
  });

  test("every file of Relevo's own that it acts on after a crash is replaced through replaceFileDurably, never by a bare rename", async () => {
    for (const [file, durableWrite] of [
      ["src/secrets/secrets-store.ts", "replaceFileDurably("],
      ["src/cluster/membership.ts", "replaceFileDurably("],
      ["src/cluster/cluster-identity.ts", "replaceFileDurably("],
      // Manifests are repository objects: a directory store's put is the same durable replace (its test above).
      ["src/storage/repository.ts", "this.objects.writeJson("],
      ["src/repository/directory-store.ts", "publishDurably("],
    ] as const) {
      const source = await readFile(path.join(projectRoot(), file), "utf8");
      expect({ file, durable: source.includes(durableWrite) }).toEqual({ file, durable: true });
    }
    for (const file of ["src/secrets/secrets-store.ts", "src/cluster/membership.ts", "src/cluster/cluster-identity.ts"]) {
      const source = await readFile(path.join(projectRoot(), file), "utf8");
      expect({ file, renames: /\brename\(/.test(source) }).toEqual({ file, renames: false });
    }
  });

  test("replaceFileDurably replaces a symlink at the name, never writes through it", async () => {
    const dir = await scratch();
    const victim = path.join(dir, "victim");
    await writeFile(victim, "untouched");
    const file = path.join(dir, "members.json");
    await symlink(victim, file);
    await replaceFileDurably(file, "{}\n", { mode: 0o600 });
    expect(await readFile(victim, "utf8")).toBe("untouched");
    expect(await readFile(file, "utf8")).toBe("{}\n");
  });

  test("the Docker driver's writes sync the file, and the directory after the rename", async () => {
    const sh = (argv: string[]): string => argv.join(" ");
    expect(sh(writeCommand("/d/f.tmp", { mode: 0o600, fresh: false, durable: true }))).toContain('sync -- "$1"');
    expect(sh(renameCommand("/d/f.tmp", "/d/f", { durable: true }))).toContain('mv -f -- "$1" "$2" && sync -- "$(dirname -- "$2")"');
    expect(renameCommand("/d/f.tmp", "/d/f", { durable: false })).toEqual(["mv", "-f", "--", "/d/f.tmp", "/d/f"]);
    // The file agent's own writes (most small files go through it): fsync, rename, fsync of the directory, in that order.
    const agent = await readFile(path.join(projectRoot(), "src/nodes/docker/file-agent.ts"), "utf8");
    expect(agent).toContain('sync -- "$target" 2>/dev/null && mv -f -- "$target" "$path" 2>/dev/null && sync -- "$(dirname -- "$path")"');
  });

  test("temporary files a crash left are removed at start (a live writer's, a link and other files are not), and never backed up", async () => {
    const home = await scratch();
    const outside = path.join(await scratch(), "outside");
    await writeFile(outside, "not Relevo's");
    const gone = 4_194_305; // above the largest pid_max: no process has it
    const names = {
      abandoned: `secrets.json.relevo-tmp-${gone}-0123456789ab`,
      live: `members.json.relevo-tmp-${process.pid}-0123456789ab`,
      link: `cluster-identity.json.relevo-tmp-${gone}-ba9876543210`,
      other: "secrets.json",
    };
    await writeFile(path.join(home, names.abandoned), '{"passwords":"..."}');
    await writeFile(path.join(home, names.live), "{}");
    await symlink(outside, path.join(home, names.link));
    await writeFile(path.join(home, names.other), "{}");
    expect(await removeAbandonedTemporaries(home)).toEqual([names.abandoned]);
    expect((await readdir(home)).sort()).toEqual([names.live, names.link, names.other].sort());
    expect(await readFile(outside, "utf8")).toBe("not Relevo's");

    const file = (name: string) => ({ path: name, type: "file" as const });
    expect(isExcluded(file(`postgresql.auto.conf.relevo-tmp-${gone}-0123456789ab`), new Set())).toBe(true);
    expect(isExcluded(file(`global/x.relevo-tmp-1-0123456789ab`), new Set())).toBe(true);
    // The Docker driver's temporary names (the file agent's `.relevo-tmp-$$`, container-files' `.relevo-tmp-<hex>`) too.
    expect(isExcluded(file("postgresql.auto.conf.relevo-tmp-4242"), new Set())).toBe(true);
    expect(isExcluded(file("standby.signal.relevo-tmp-0a1b2c3d4e5f"), new Set())).toBe(true);
  });
});
