import { access, chmod, mkdir, readdir, rename } from "node:fs/promises";
import { chownNoFollow } from "../../util/owned-files";
import { constants } from "node:fs";
import path from "node:path";
import { ErrorCode, isRelevoError, RelevoError } from "../../errors";
import type {
  DriverNodeView,
  ExecOptions,
  ExecResult,
  FileEntry,
  NodeDriver,
  NodeProcessState,
  NodeRef,
  NodeTlsFiles,
  NodeTlsPaths,
  NodeTlsSource,
  SmallFileRead,
  StopMode,
  ChunkedReadOptions,
  ByteRange,
  WriteParents,
} from "../node-driver";
import { exclusivelyFor } from "../node-driver";
import type { Readable } from "node:stream";
import {
  listTree,
  makeDirectoryOwned,
  openOptionalReadStream,
  readOptionalFile,
  readLocalChunks,
  readLocalRanges,
  readSmallLocalFile,
  removeInside,
  resolveInside,
  type GuardedPath,
  writeFileAtomic,
  writeNewFile,
  writeStreamAtomic,
} from "./local-files";
import { resolvePostgresIdentity, type OsIdentity } from "../os-user";
import { processesInGroup, processTree, readCommandLine, readProcStat } from "./proc";
import { sleep } from "../../util/sleep";
import { runCommand } from "./run-command";
import { DATA_DIRECTORY, SERVER_LOG, TLS_DIRECTORY, TLS_FILES, foreignEntries, type FolderEntry } from "./node-folder";
import { libpqTlsEnvironment } from "../../postgres/tls-settings";
import { existsSync, readFileSync } from "node:fs";

function ownProcessGroup(): number {
  const text = readFileSync("/proc/self/stat", "utf8");
  return Number(text.slice(text.lastIndexOf(")") + 2).split(" ")[2]);
}

export interface LocalDriverOptions {
  /** Node directories live under `<home>/nodes/<name>`. */
  readonly home: string;
  readonly pgBinDir: string;
  readonly pgOsUser: string;
  /** Nodes kept outside `<home>/nodes` (e.g. a restored copy the operator put elsewhere): name → directory. */
  readonly nodeDirectories?: Readonly<Record<string, string>>;
  /** The nodes' certificates, written into each node's folder before every start. */
  readonly tls: NodeTlsSource;
}

const REQUIRED_TOOLS = ["initdb", "pg_ctl", "postgres", "pg_basebackup", "pg_rewind", "pg_controldata", "psql"];

/**
 * PostgreSQL clusters as processes of this machine: the embedded default.
 * Each node is `<home>/nodes/<name>/data` plus a server log beside it.
 */
export class LocalDriver implements NodeDriver {
  readonly kind = "local" as const;
  private readonly identity: OsIdentity | null;
  private readonly nodesRoot: string;

  constructor(private readonly options: LocalDriverOptions) {
    this.identity = resolvePostgresIdentity(options.pgOsUser);
    this.nodesRoot = path.join(options.home, "nodes");
  }

  async checkPrerequisites(): Promise<void> {
    for (const tool of REQUIRED_TOOLS) {
      try {
        await access(path.join(this.options.pgBinDir, tool), constants.X_OK);
      } catch {
        throw new RelevoError(
          ErrorCode.MissingBinary,
          `PostgreSQL 15 tool ${tool} not found in ${this.options.pgBinDir}: install Debian's postgresql-15 ` +
            `(apt-get install -y postgresql-15) or set RELEVO_PG_BIN_DIR`,
          { details: { env: "RELEVO_PG_BIN_DIR" } },
        );
      }
    }
    const { stdout } = await runCommand(path.join(this.options.pgBinDir, "postgres"), ["--version"], { identity: this.identity });
    if (!/\(PostgreSQL\) 15\./.test(stdout)) {
      throw new RelevoError(
        ErrorCode.MissingBinary,
        `${this.options.pgBinDir}/postgres is "${stdout.trim()}", Relevo needs PostgreSQL 15: install postgresql-15 or set RELEVO_PG_BIN_DIR`,
        { details: { env: "RELEVO_PG_BIN_DIR" } },
      );
    }
  }

  async close(): Promise<void> {
    // Nothing held open: every tool runs to its end.
  }

  async releaseHelpers(): Promise<void> {
    // Tools run as processes of their own, to their end: nothing is kept beside a node.
  }

  fileOwner(): Promise<OsIdentity | null> {
    return Promise.resolve(this.identity);
  }

  private nodeDir(node: NodeRef): string {
    return this.options.nodeDirectories?.[node.name] ?? path.join(this.nodesRoot, node.name);
  }

  private logFile(node: NodeRef): string {
    return path.join(this.nodeDir(node), SERVER_LOG);
  }

  dataDirectory(node: NodeRef): string {
    return path.join(this.nodeDir(node), DATA_DIRECTORY);
  }

  nodeDirectory(node: NodeRef): string {
    return this.nodeDir(node);
  }

  tlsPaths(node: NodeRef): NodeTlsPaths {
    const directory = path.join(this.nodeDir(node), TLS_DIRECTORY);
    return {
      certificate: path.join(directory, TLS_FILES.certificate),
      key: path.join(directory, TLS_FILES.key),
      ca: path.join(directory, TLS_FILES.ca),
    };
  }

  async extendTrust(node: NodeRef): Promise<void> {
    // The trust file alone: a start writing the node's certificate and key meanwhile keeps what it wrote.
    if ((await this.readTls(node)) !== null) await this.writeTrust(node, this.options.tls.caPem);
  }

  async renewTls(node: NodeRef): Promise<{ readonly previous: NodeTlsFiles | null; readonly installed: NodeTlsFiles }> {
    const previous = await this.readTls(node);
    const installed = await this.issueTls(node);
    await this.installTls(node, installed);
    return { previous, installed };
  }

  /**
   * The node's TLS files, written as root into `<node>/tls/` (0700, the
   * PostgreSQL user's) the way every file of the folder is: through no
   * link, owned by that user, atomically and durably. The key 0600:
   * PostgreSQL refuses a key others can read.
   */
  async installTls(node: NodeRef, files: NodeTlsFiles): Promise<void> {
    await this.writeTrust(node, files.caPem);
    await writeFileAtomic(this.inFolder(node, [TLS_DIRECTORY, TLS_FILES.certificate]), files.certificatePem, {
      mode: 0o644,
      identity: this.identity,
    });
    await writeFileAtomic(this.inFolder(node, [TLS_DIRECTORY, TLS_FILES.key]), files.keyPem, { mode: 0o600, identity: this.identity });
  }

  /** A new certificate for the node and the CA certificates as they are now. */
  private async issueTls(node: NodeRef): Promise<NodeTlsFiles> {
    const issued = await this.options.tls.serverCertificate(node);
    return { certificatePem: issued.certificatePem, keyPem: issued.keyPem, caPem: this.options.tls.caPem };
  }

  private async readTls(node: NodeRef): Promise<NodeTlsFiles | null> {
    const read = async (file: string): Promise<string | null> =>
      (await readOptionalFile(this.inFolder(node, [TLS_DIRECTORY, file])))?.toString("utf8") ?? null;
    const [certificatePem, keyPem, caPem] = await Promise.all([read(TLS_FILES.certificate), read(TLS_FILES.key), read(TLS_FILES.ca)]);
    if (certificatePem === null || keyPem === null) return null;
    return { certificatePem, keyPem, caPem: caPem ?? this.options.tls.caPem };
  }

  /** The CA's certificates alone: what the tools `exec` runs verify servers with. */
  private async writeTrust(node: NodeRef, caPem: string = this.options.tls.caPem): Promise<void> {
    await writeFileAtomic(this.inFolder(node, [TLS_DIRECTORY, TLS_FILES.ca]), caPem, {
      mode: 0o644,
      identity: this.identity,
    });
  }

  /**
   * `below` the node's folder, for root's file work there: the PostgreSQL
   * user owns that folder and may make any name in it a symlink, so the
   * walk starts at the folder's parent (the data home's nodes/, root's) and
   * follows no link from there on (see local-files, guarded-directory).
   */
  private inFolder(node: NodeRef, below: readonly string[]): GuardedPath {
    const dir = this.nodeDir(node);
    return { anchor: path.dirname(dir), below: [path.basename(dir), ...below] };
  }

  /** A path in the node's data directory (refused if it escapes it), as inFolder. */
  private inData(node: NodeRef, relativePath: string): GuardedPath {
    const data = this.dataDirectory(node);
    const inside = path.relative(data, resolveInside(data, relativePath));
    return this.inFolder(node, [DATA_DIRECTORY, ...inside.split(path.sep).filter(Boolean)]);
  }

  claimFile(node: NodeRef): string {
    // Beside the node's folder (nodes/<name>.restore.lock), so that the folder itself stays absent until it is made.
    return `${this.nodeDir(node)}.restore.lock`;
  }

  async provision(node: NodeRef): Promise<void> {
    // The PostgreSQL user must traverse every parent of its data directory.
    await mkdir(this.nodesRoot, { recursive: true, mode: 0o755 });
    await chmod(this.nodesRoot, 0o755);
    const dir = this.nodeDir(node);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chownNoFollow(dir, this.identity);
    const probe = await runCommand("/usr/bin/test", ["-w", dir], { identity: this.identity, allowFailure: true });
    if (probe.exitCode !== 0) {
      throw new RelevoError(
        ErrorCode.DataDirNotOurs,
        `the PostgreSQL OS user${this.identity ? ` "${this.identity.name}"` : ""} cannot write ${dir}: every parent directory ` +
          `must be traversable by it (chmod o+x), or choose another RELEVO_HOME`,
        { details: { env: "RELEVO_HOME" } },
      );
    }
  }

  async destroy(node: NodeRef): Promise<void> {
    const state = await this.state(node);
    if (state.phase === "running" || state.phase === "paused") await this.kill(node);
    // The folder is the PostgreSQL user's: removed through handles, never by name below it (guarded-removal).
    await removeInside([this.inFolder(node, [])]);
  }

  async setAside(node: NodeRef, suffix: string): Promise<string> {
    const state = await this.state(node);
    if (state.phase === "running" || state.phase === "paused") {
      throw new RelevoError(ErrorCode.PreconditionFailed, `node ${node.name} runs (pid ${state.pid}): its storage is not set aside`);
    }
    const aside = `${this.nodeDir(node)}.${suffix}`;
    // Beside it, in the same file system: a rename, nothing copied or deleted. A name taken already is never replaced.
    if (existsSync(aside)) throw new RelevoError(ErrorCode.PreconditionFailed, `cannot set ${node.name}'s remains aside: ${aside} exists`);
    await rename(this.nodeDir(node), aside);
    return aside;
  }

  async foreignRemains(node: NodeRef): Promise<string[]> {
    const dir = this.nodeDir(node);
    const entries = await readdir(dir, { withFileTypes: true }).catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return [];
      throw error;
    });
    const folder: FolderEntry[] = entries.map((entry) => ({
      name: entry.name,
      type: entry.isSymbolicLink() ? "symlink" : entry.isDirectory() ? "directory" : entry.isFile() ? "file" : "other",
    }));
    return foreignEntries(folder).map((name) => path.join(dir, name));
  }

  async start(node: NodeRef, options: { timeoutMs: number }): Promise<void> {
    const state = await this.state(node);
    if (state.phase === "running") return;
    if (state.phase === "paused") return this.resume(node);
    if (state.phase === "absent") {
      throw new RelevoError(ErrorCode.PreconditionFailed, `node ${node.name} has no data directory; it must be created first`);
    }
    const startOnNewFiles = async (): Promise<void> => {
      const files = await this.issueTls(node);
      await this.installTls(node, files);
      await this.options.tls.installed?.(node, files.certificatePem);
      try {
        await this.pgCtl(node, ["start", "-w", "-t", String(Math.ceil(options.timeoutMs / 1000)), "-l", this.logFile(node)], {
          timeoutMs: options.timeoutMs + 5000,
          detached: true,
        });
      } catch (error) {
        throw new RelevoError(ErrorCode.CommandFailed, `node ${node.name} did not start: ${await this.logTail(node)}`, {
          cause: error,
          details: { logFile: this.logFile(node) },
        });
      }
    };
    // No renewal of this node's certificate in between: the postmaster reads a certificate and key of one pair.
    await exclusivelyFor(this.options.tls, node, startOnNewFiles);
  }

  async stop(node: NodeRef, options: { mode: StopMode; timeoutMs: number }): Promise<void> {
    const state = await this.state(node);
    if (state.phase === "absent" || state.phase === "stopped") return;
    if (state.phase === "paused") await this.resume(node);
    await this.pgCtl(node, ["stop", "-w", "-m", options.mode, "-t", String(Math.ceil(options.timeoutMs / 1000))], {
      timeoutMs: options.timeoutMs + 5000,
    });
  }

  async kill(node: NodeRef): Promise<void> {
    const pid = await this.postmasterPid(node);
    if (pid === null) return;
    const stat = await readProcStat(pid);
    if (!stat) return;
    // The postmaster is frozen first so that it forks nothing more; then it
    // and every process it started (each backend is in a session of its own,
    // so not in its process group) get SIGKILL, which is never queued behind
    // SIGSTOP. No backend outlives it to finish a commit.
    const group = stat.pgid > 1 ? stat.pgid : pid;
    signalGroup(group, pid, "SIGSTOP");
    const tree = await processTree(pid);
    for (const member of tree) signalProcess(member, "SIGKILL");
    signalGroup(group, pid, "SIGKILL");
    const alive = async (): Promise<number[]> => {
      const left: number[] = [];
      for (const member of tree) if ((await readProcStat(member)) !== null) left.push(member);
      return [...left, ...(await processesInGroup(group))];
    };
    for (let waited = 0; (await alive()).length > 0; waited += 50) {
      if (waited > 10000)
        throw new RelevoError(ErrorCode.Timeout, `node ${node.name}: processes ${(await alive()).join(", ")} survived SIGKILL for 10 s`);
      await sleep(50);
    }
    // Dead but maybe not yet reaped: a new postmaster would take the zombie's
    // pid in postmaster.pid for a live server and refuse to start. Every
    // process of the group is dead, so the lock file is stale: remove it.
    for (let waited = 0; waited < 500 && existsSync(`/proc/${pid}`); waited += 50) await sleep(50);
    if (existsSync(`/proc/${pid}`)) await removeInside([this.inData(node, "postmaster.pid")]);
  }

  async pause(node: NodeRef): Promise<void> {
    const pid = await this.requireRunning(node, "pause");
    const stat = await readProcStat(pid);
    // The postmaster first (it forks nothing more), then every process it started: the whole server hangs.
    signalGroup(stat?.pgid ?? pid, pid, "SIGSTOP");
    for (const member of await processTree(pid)) signalProcess(member, "SIGSTOP");
  }

  async resume(node: NodeRef): Promise<void> {
    const pid = await this.postmasterPid(node);
    if (pid === null) return;
    const stat = await readProcStat(pid);
    if (!stat) return;
    for (const member of await processTree(pid)) signalProcess(member, "SIGCONT");
    signalGroup(stat.pgid, pid, "SIGCONT");
  }

  async state(node: NodeRef): Promise<NodeProcessState> {
    const dirExists = await access(this.nodeDir(node)).then(
      () => true,
      () => false,
    );
    if (!dirExists) return { phase: "absent" };
    // By the postmaster's pid file alone: a server still runs on a data directory whose PG_VERSION is gone (a damaged
    // disk, a hand's mistake), and must never be taken for a stopped node whose remains may be removed.
    const pid = await this.postmasterPid(node);
    if (pid === null) return { phase: "stopped" };
    const stat = await readProcStat(pid);
    if (!stat) return { phase: "stopped" };
    return stat.state === "T" ? { phase: "paused", pid } : { phase: "running", pid };
  }

  async describe(node: NodeRef): Promise<DriverNodeView> {
    return {
      driver: this.kind,
      state: await this.state(node),
      dataDirectory: this.dataDirectory(node),
      logFile: this.logFile(node),
    };
  }

  async exec(node: NodeRef, argv: readonly string[], options: ExecOptions): Promise<ExecResult> {
    const [tool, ...args] = argv;
    if (!tool || tool.includes("/")) {
      throw new RelevoError(ErrorCode.BadUserInput, `exec takes a PostgreSQL tool name, got "${tool ?? ""}"`);
    }
    // Every tool that connects verifies the server (verify-full) against the CA, which is there before it runs.
    await this.writeTrust(node);
    // Both modes run the same way here; the distinction matters to the Docker driver.
    return runCommand(path.join(this.options.pgBinDir, tool), args, {
      identity: this.identity,
      cwd: this.nodeDir(node),
      env: { ...libpqTlsEnvironment(this.tlsPaths(node).ca), ...options.env },
      stdin: options.stdin,
      timeoutMs: options.timeoutMs,
      allowFailure: options.allowFailure,
    });
  }

  async readFile(node: NodeRef, relativePath: string): Promise<Buffer | null> {
    return readOptionalFile(this.inData(node, relativePath));
  }

  async readChunks(
    node: NodeRef,
    relativePath: string,
    options: ChunkedReadOptions,
    consume: (chunk: Buffer) => Promise<void>,
  ): Promise<boolean> {
    return readLocalChunks(this.inData(node, relativePath), options, consume);
  }

  async readRanges(
    node: NodeRef,
    relativePath: string,
    ranges: ReadonlyArray<ByteRange>,
    options: ChunkedReadOptions,
    consume: (chunk: Buffer) => Promise<void>,
  ): Promise<boolean> {
    return readLocalRanges(this.inData(node, relativePath), ranges, options, consume);
  }

  async readSmallFile(node: NodeRef, relativePath: string, maxBytes: number): Promise<SmallFileRead> {
    return readSmallLocalFile(this.inData(node, relativePath), maxBytes);
  }

  async writeFile(
    node: NodeRef,
    relativePath: string,
    content: string | Buffer,
    options: { mode?: number; fresh?: boolean; parents?: WriteParents } = {},
  ): Promise<void> {
    const file = this.inData(node, relativePath);
    const settings = { mode: options.mode ?? 0o600, identity: this.identity, parents: options.parents };
    if (options.fresh) await writeNewFile(file, content, settings);
    else await writeFileAtomic(file, content, settings);
  }

  async openRead(node: NodeRef, relativePath: string): Promise<Readable | null> {
    return openOptionalReadStream(this.inData(node, relativePath));
  }

  async writeStream(
    node: NodeRef,
    relativePath: string,
    source: AsyncIterable<Buffer>,
    options: { mode?: number; durable?: boolean; parents?: WriteParents } = {},
  ): Promise<void> {
    await writeStreamAtomic(this.inData(node, relativePath), source, {
      mode: options.mode ?? 0o600,
      identity: this.identity,
      durable: options.durable ?? true,
      parents: options.parents,
    });
  }

  async makeDirectory(node: NodeRef, relativePath: string, options: { mode?: number } = {}): Promise<void> {
    const target = this.inData(node, relativePath);
    // The data directory itself first (PostgreSQL insists on 0700 and its own user).
    await makeDirectoryOwned(this.inData(node, "."), { mode: 0o700, identity: this.identity });
    await makeDirectoryOwned(target, { mode: options.mode ?? 0o700, identity: this.identity });
  }

  async listFiles(node: NodeRef, relativeDir: string): Promise<FileEntry[]> {
    const data = this.dataDirectory(node);
    const prefix = path.relative(data, resolveInside(data, relativeDir)).split(path.sep).join("/");
    return listTree(this.inData(node, relativeDir), prefix);
  }

  async removeFiles(node: NodeRef, relativePaths: readonly string[]): Promise<void> {
    await removeInside(relativePaths.map((relativePath) => this.inData(node, relativePath)));
  }

  /** The postmaster's pid from postmaster.pid, if that process is a live postgres. */
  private async postmasterPid(node: NodeRef): Promise<number | null> {
    const content = await readOptionalFile(this.inData(node, "postmaster.pid"));
    const pid = Number(content?.toString("utf8").split("\n")[0]);
    if (!Number.isInteger(pid) || pid <= 0) return null;
    // A stale file after a crash may name a pid the kernel has since reused.
    const commandLine = await readCommandLine(pid);
    return commandLine.includes("postgres") ? pid : null;
  }

  private async requireRunning(node: NodeRef, action: string): Promise<number> {
    const state = await this.state(node);
    if (state.phase !== "running" && state.phase !== "paused") {
      throw new RelevoError(ErrorCode.PreconditionFailed, `cannot ${action} node ${node.name}: it is ${state.phase}`);
    }
    return state.pid;
  }

  private pgCtl(node: NodeRef, args: string[], options: { timeoutMs: number; detached?: boolean }): Promise<ExecResult> {
    return runCommand(path.join(this.options.pgBinDir, "pg_ctl"), [args[0]!, "-D", this.dataDirectory(node), ...args.slice(1)], {
      identity: this.identity,
      cwd: this.nodeDir(node),
      timeoutMs: options.timeoutMs,
      detached: options.detached,
    });
  }

  private async logTail(node: NodeRef): Promise<string> {
    try {
      // Read as root from the folder the PostgreSQL user owns: a link there (to secrets.json, say) is refused, never quoted.
      const text = (await readOptionalFile(this.inFolder(node, [SERVER_LOG])))?.toString("utf8");
      return text === undefined ? "no server log" : text.trim().split("\n").slice(-5).join(" | ");
    } catch (error) {
      return isRelevoError(error) ? `server log not read: ${error.message}` : "no server log";
    }
  }
}

/**
 * Signals a whole process group, unless that group is Relevo's own (a server
 * started by something else in our group): then only the postmaster.
 */
function signalProcess(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

function signalGroup(pgid: number, pid: number, signal: NodeJS.Signals): void {
  try {
    if (pgid <= 1 || pgid === ownProcessGroup()) throw new Error("not a group of its own");
    process.kill(-pgid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}
