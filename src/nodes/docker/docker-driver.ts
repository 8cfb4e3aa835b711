import type Docker from "dockerode";
import { removeGuarded } from "../../util/guarded-removal";
import path from "node:path";
import type { Readable } from "node:stream";
import { ErrorCode, RelevoError } from "../../errors";
import { promiseTry } from "../../util/promise-try";
import type {
  ByteRange,
  ChunkedReadOptions,
  DriverNodeView,
  ExecOptions,
  ExecResult,
  FileEntry,
  NodeDriver,
  NodeProcessState,
  NodeRef,
  NodeTlsFiles,
  NodeTlsPaths,
  SmallFileRead,
  StopMode,
  WriteParents,
} from "../node-driver";
import { exclusivelyFor } from "../node-driver";
import type { OsIdentity } from "../os-user";
import { ContainerFiles } from "./container-files";
import { LABELS, PG_USER, PGDATA, containerName, stopSignalFor, volumeName } from "./container-spec";
import { isStatus } from "./docker-client";
import { runContainerCommand } from "./docker-exec";
import { removeCommand } from "./file-commands";
import { NodeContainers, type DockerDriverOptions } from "./node-containers";
import { signalContainer, waitStopped, waitUntilReady } from "./container-lifecycle";
import { containerTlsPaths, TLS_DIRECTORY, tlsFilesFromArchive } from "./tls-files";
import { libpqTlsEnvironment } from "../../postgres/tls-settings";

export type { DockerDriverOptions } from "./node-containers";

/**
 * Nodes as containers of a Docker engine, through its API (dockerode). One
 * container per node (PostgreSQL as PID 1, data in a named volume), created
 * by Relevo or adopted when one with the node's labels exists (docker
 * compose). Work on the data directory goes through `docker exec`: in the
 * node's container while the server runs, in its tools container otherwise
 * (see container-spec.ts). Nothing of a data directory is ever held whole in
 * memory: reads and writes stream through exec. The containers and storage
 * are node-containers.ts', the file operations container-files.ts', waiting
 * on and signalling a container container-lifecycle.ts'; this class is the
 * lifecycle and the tools.
 */
export class DockerDriver implements NodeDriver {
  readonly kind = "docker" as const;
  private readonly containers: NodeContainers;
  private readonly files: ContainerFiles;

  constructor(options: DockerDriverOptions) {
    this.containers = new NodeContainers(options);
    this.files = new ContainerFiles(this.containers);
  }

  private get docker(): Docker {
    return this.containers.docker;
  }

  private get options(): DockerDriverOptions {
    return this.containers.options;
  }

  async checkPrerequisites(): Promise<void> {
    await this.containers.engine("reach the engine", () => this.docker.ping());
    await this.containers.facts();
  }

  close(): Promise<void> {
    return promiseTry(() => this.files.close());
  }

  async releaseHelpers(node: NodeRef): Promise<void> {
    await this.containers.locked(node, () => this.removeTools(node));
  }

  /** The node's tools container and its file agents, gone (for callers holding the node's lock). */
  private async removeTools(node: NodeRef): Promise<void> {
    const tools = await this.containers.find(node, "tools");
    if (!tools) return;
    this.files.stopAgentsOf(tools.Id);
    await this.containers.engine(`remove the tools container of node ${node.name}`, async () => {
      try {
        await this.docker.getContainer(tools.Id).remove({ force: true, v: true });
      } catch (error) {
        if (!isStatus(error, 404) && !isStatus(error, 409)) throw error; // gone already, or being removed
      }
    });
  }

  async fileOwner(): Promise<OsIdentity | null> {
    // Only root can hand files to another uid; otherwise they stay Relevo's.
    if (process.getuid?.() !== 0) return null;
    return (await this.containers.facts()).owner;
  }

  dataDirectory(): string {
    return PGDATA;
  }

  tlsPaths(): NodeTlsPaths {
    return containerTlsPaths();
  }

  async extendTrust(node: NodeRef): Promise<void> {
    // The trust file alone (into the node's container and its tools'): a start writing the node's certificate and
    // key meanwhile keeps what it wrote.
    const info = await this.containers.find(node, "node");
    if (info) await this.containers.putTlsFiles(node, this.docker.getContainer(info.Id), null, this.options.tls.caPem);
    const tools = await this.containers.find(node, "tools");
    if (tools) await this.containers.putTlsFiles(node, this.docker.getContainer(tools.Id), null, this.options.tls.caPem);
  }

  async renewTls(node: NodeRef): Promise<{ readonly previous: NodeTlsFiles | null; readonly installed: NodeTlsFiles }> {
    const previous = await this.readTls(node);
    const installed = await this.issueTls(node);
    await this.installTls(node, installed);
    return { previous, installed };
  }

  /** A new certificate for the node and the CA certificates as they are now. */
  private async issueTls(node: NodeRef): Promise<NodeTlsFiles> {
    const issued = await this.options.tls.serverCertificate(node);
    return { certificatePem: issued.certificatePem, keyPem: issued.keyPem, caPem: this.options.tls.caPem };
  }

  /**
   * Into the node's container (a node without one gets its files when it
   * is made and started), and the CA certificates into its tools
   * container if it has one: its pg_basebackup and pg_rewind trust what
   * the servers now present.
   */
  async installTls(node: NodeRef, files: NodeTlsFiles): Promise<void> {
    const info = await this.containers.find(node, "node");
    if (info) await this.containers.putTlsFiles(node, this.docker.getContainer(info.Id), files, files.caPem);
    const tools = await this.containers.find(node, "tools");
    if (tools) await this.containers.putTlsFiles(node, this.docker.getContainer(tools.Id), null, files.caPem);
  }

  /** The node container's TLS files, read through the engine's archive API; null without a container or the files. */
  private async readTls(node: NodeRef): Promise<NodeTlsFiles | null> {
    const info = await this.containers.find(node, "node");
    if (!info) return null;
    const container = this.docker.getContainer(info.Id);
    const archive = await this.containers.engine(`read the TLS files of node ${node.name}`, () =>
      // 404: a container made before TLS, or never started: no files yet.
      container
        .getArchive({ path: TLS_DIRECTORY })
        .catch((error: unknown) => (isStatus(error, 404) ? null : Promise.reject(error as Error))),
    );
    return archive === null ? null : tlsFilesFromArchive(archive);
  }

  nodeDirectory(node: NodeRef): string | null {
    // A copy's data directory is bind-mounted from <dir>/data; a node's is a volume, in no directory of this host.
    const directory = this.options.dataDirectories?.[node.name];
    return directory ? path.dirname(directory) : null;
  }

  claimFile(node: NodeRef): string {
    // A copy kept in a directory of this host is claimed beside it, as on the local driver; a node by its volume's
    // name (the engine's names are per cluster, and the processes that make this cluster's nodes share this home).
    const directory = this.options.dataDirectories?.[node.name];
    // The data directory is <dir>/data: the claim goes beside <dir> (never inside, where it would make <dir> not empty).
    if (directory) return `${path.dirname(directory)}.restore.lock`;
    return path.join(this.options.home, "nodes", `${volumeName(this.containers.naming(node))}.restore.lock`);
  }

  // ----------------------------------------------------------------- lifecycle

  async provision(node: NodeRef): Promise<void> {
    await this.containers.locked(node, () => this.containers.ensureNodeContainer(node));
    // A new volume carries the image's directory mode (1777): PostgreSQL wants 0700.
    const chmod = await this.files.run(node, ["chmod", "700", PGDATA]);
    if (chmod.exitCode !== 0)
      throw new RelevoError(ErrorCode.DataDirNotOurs, `node ${node.name}: cannot take ${PGDATA} for PostgreSQL: ${chmod.stderr.trim()}`);
  }

  /**
   * Removes the node's data and what Relevo made for it. A container Relevo
   * adopted (made by someone else, e.g. docker compose) is stopped and left
   * in place with its volume emptied: it is not Relevo's to delete, and
   * started again it only waits to be initialised.
   */
  async destroy(node: NodeRef): Promise<void> {
    await this.containers.locked(node, async () => {
      const nodeContainer = await this.containers.find(node, "node");
      const adopted = nodeContainer !== null && nodeContainer.Config.Labels?.[LABELS.home] !== this.options.home;
      if (adopted) {
        await signalContainer(this.containers, this.docker.getContainer(nodeContainer.Id), "SIGKILL");
        if (!(await waitStopped(this.containers, this.docker.getContainer(nodeContainer.Id), 10000))) {
          throw new RelevoError(
            ErrorCode.Timeout,
            `node ${node.name}: container ${nodeContainer.Name} survived SIGKILL for 10 s; its data is left as it is`,
          );
        }
      }
      if (nodeContainer) this.files.stopAgentsOf(nodeContainer.Id);
      if (adopted) {
        const wiped = await runContainerCommand(await this.containers.startTools(node), ["find", PGDATA, "-mindepth", "1", "-delete"], {
          user: PG_USER,
        });
        if (wiped.exitCode !== 0) throw this.files.failed(node, "empty its data volume", wiped);
      }
      await this.removeTools(node);
      if (adopted) return;
      if (nodeContainer)
        await this.containers.engine(`remove container ${nodeContainer.Name}`, () =>
          this.docker.getContainer(nodeContainer.Id).remove({ force: true, v: false }),
        );
      const directory = this.options.dataDirectories?.[node.name];
      // A host directory the container's postgres user writes (and may fill with links): removed through handles (guarded-removal).
      if (directory) return removeGuarded({ anchor: path.dirname(directory), below: [path.basename(directory)] });
      await this.containers.engine(`remove the volume of node ${node.name}`, async () => {
        try {
          await this.docker.getVolume(volumeName(this.containers.naming(node))).remove({ force: true });
        } catch (error) {
          if (!isStatus(error, 404)) throw error;
        }
      });
    });
  }

  /**
   * Refused, always: the engine cannot rename a volume (nor the mount of a
   * container Relevo adopted), and copying the remains into a new volume
   * could fill the disk that is already in trouble. The operator is told
   * which storage holds them and what to do; nothing is touched.
   */
  async setAside(node: NodeRef): Promise<string> {
    const info = await this.containers.find(node, "node");
    const mount = info?.Mounts.find((each) => each.Destination === PGDATA);
    const directory = this.options.dataDirectories?.[node.name];
    const storage = directory
      ? `directory ${directory}`
      : mount?.Type === "bind"
        ? `directory ${mount.Source}`
        : `volume ${mount?.Name ?? volumeName(this.containers.naming(node))}`;
    throw new RelevoError(
      ErrorCode.PreconditionFailed,
      `node ${node.name}'s ${storage} holds files but no PG_VERSION: it may still be recovered by hand, and Relevo never deletes it, ` +
        `nor can it rename it on Docker: copy out what you need, then empty it (or remove it${info ? ` and container ${info.Name.replace(/^\//, "")}` : ""}), ` +
        `and run relevo restore --cluster again`,
      { details: { node: node.name, storage } },
    );
  }

  /**
   * Nothing, ever: the volume (or the directory a node's container mounts)
   * is the data directory itself, mounted at PGDATA, so whatever it holds is
   * the data directory's content, and a caller counts it there (files but no
   * PG_VERSION: set aside, which this driver refuses, never deleted).
   * destroy() removes nothing beyond it but Relevo's own container.
   */
  foreignRemains(): Promise<string[]> {
    return Promise.resolve([]);
  }

  async state(node: NodeRef): Promise<NodeProcessState> {
    return this.stateOf(node, await this.containers.find(node, "node"));
  }

  /** The node's state from its container as just inspected (null: none). */
  private async stateOf(node: NodeRef, info: Docker.ContainerInspectInfo | null): Promise<NodeProcessState> {
    if (info?.State.Running)
      return info.State.Paused ? { phase: "paused", pid: info.State.Pid } : { phase: "running", pid: info.State.Pid };
    // A container removed behind Relevo's back leaves the data in its volume: stopped, recreated on start.
    if (info || (await this.containers.volumeExists(node))) return { phase: "stopped" };
    return { phase: "absent" };
  }

  async describe(node: NodeRef): Promise<DriverNodeView> {
    // One inspection for both the state and the container's view (the topology asks every node every poll).
    const info = await this.containers.find(node, "node");
    return {
      driver: this.kind,
      state: await this.stateOf(node, info),
      dataDirectory: PGDATA,
      containerId: info?.Id,
      container: info
        ? {
            id: info.Id,
            name: info.Name.replace(/^\//, ""),
            image: info.Config.Image,
            status: info.State.Status,
            health: info.State.Health?.Status ?? null,
            restartCount: info.RestartCount,
          }
        : null,
    };
  }

  async start(node: NodeRef, options: { timeoutMs: number }): Promise<void> {
    const state = await this.state(node);
    if (state.phase === "running") return;
    if (state.phase === "paused") return this.resume(node);
    if (state.phase === "absent") {
      throw new RelevoError(ErrorCode.PreconditionFailed, `node ${node.name} has no data volume; it must be created first`);
    }
    const info = await this.containers.locked(node, () => this.containers.ensureNodeContainer(node));
    const container = this.docker.getContainer(info.Id);
    const startOnNewFiles = async (): Promise<void> => {
      const files = await this.issueTls(node);
      await this.installTls(node, files);
      await this.options.tls.installed?.(node, files.certificatePem);
      await this.containers.engine(`start container ${info.Name}`, async () => {
        try {
          await container.start();
        } catch (error) {
          if (!isStatus(error, 304)) throw error; // 304: already started
        }
      });
      await waitUntilReady(this.containers, node, container, options.timeoutMs);
    };
    // No renewal of this node's certificate in between: the postmaster reads a certificate and key of one pair.
    await exclusivelyFor(this.options.tls, node, startOnNewFiles);
  }

  async stop(node: NodeRef, options: { mode: StopMode; timeoutMs: number }): Promise<void> {
    const info = await this.containers.find(node, "node");
    if (!info?.State.Running) return;
    const container = this.docker.getContainer(info.Id);
    if (info.State.Paused) await this.resume(node);
    await signalContainer(this.containers, container, stopSignalFor(options.mode));
    if (!(await waitStopped(this.containers, container, options.timeoutMs))) {
      throw new RelevoError(ErrorCode.CommandFailed, `node ${node.name} did not stop (${options.mode}) within ${options.timeoutMs} ms`);
    }
    this.files.stopAgentsOf(info.Id);
  }

  async kill(node: NodeRef): Promise<void> {
    const info = await this.containers.find(node, "node");
    if (!info?.State.Running) return;
    const container = this.docker.getContainer(info.Id);
    // SIGKILL to PID 1 of a container ends every process in it: no backend outlives the postmaster.
    await signalContainer(this.containers, container, "SIGKILL");
    if (info.State.Paused) await this.containers.engine("thaw a killed container", () => container.unpause()).catch(() => undefined);
    if (!(await waitStopped(this.containers, container, 10000)))
      throw new RelevoError(ErrorCode.Timeout, `node ${node.name}: container ${info.Name} survived SIGKILL for 10 s`);
    this.files.stopAgentsOf(info.Id);
  }

  async pause(node: NodeRef): Promise<void> {
    const info = await this.containers.find(node, "node");
    if (!info?.State.Running) throw new RelevoError(ErrorCode.PreconditionFailed, `cannot pause node ${node.name}: it is not running`);
    if (info.State.Paused) return;
    // The cgroup freezer stops every process of the container at once: the whole server hangs.
    await this.containers.engine(`pause ${info.Name}`, () => this.docker.getContainer(info.Id).pause());
  }

  async resume(node: NodeRef): Promise<void> {
    const info = await this.containers.find(node, "node");
    if (!info?.State.Paused) return;
    await this.containers.engine(`unpause ${info.Name}`, () => this.docker.getContainer(info.Id).unpause());
  }

  // --------------------------------------------------------------------- tools

  async exec(node: NodeRef, argv: readonly string[], options: ExecOptions): Promise<ExecResult> {
    const [tool, ...args] = argv;
    if (!tool || tool.includes("/")) {
      throw new RelevoError(ErrorCode.BadUserInput, `exec takes a PostgreSQL tool name, got "${tool ?? ""}"`);
    }
    if (options.mode === "offline") await this.clearStaleLock(node);
    // `timeout` inside the container: the Engine API cannot kill an exec'ed process.
    const cmd = options.timeoutMs ? ["timeout", "-s", "KILL", `${Math.ceil(options.timeoutMs / 1000)}s`, tool, ...args] : [tool, ...args];
    // Every tool that connects verifies the server (verify-full) against the CA in its container.
    const env = { ...libpqTlsEnvironment(containerTlsPaths().ca), ...options.env };
    const result = await this.files.run(node, cmd, { env, stdin: options.stdin });
    const stdout = result.stdout.toString("utf8");
    if (options.timeoutMs && result.exitCode === 137) {
      throw new RelevoError(ErrorCode.Timeout, `${tool} did not finish within ${options.timeoutMs} ms on node ${node.name}`);
    }
    if (result.exitCode !== 0 && !options.allowFailure) {
      const why = result.stderr.trim() || stdout.trim() || "no output";
      throw new RelevoError(ErrorCode.CommandFailed, `${tool} ${args[0] ?? ""} failed with exit code ${result.exitCode}: ${why}`, {
        details: { exitCode: result.exitCode, stderr: result.stderr.slice(-4000) },
      });
    }
    return { exitCode: result.exitCode, stdout, stderr: result.stderr };
  }

  /**
   * A server that died with its container (docker kill, a crash) leaves
   * postmaster.pid naming PID 1. In the tools container PID 1 is alive (its
   * `sleep`), so pg_rewind's single-user postgres would take the stale lock
   * for a running server and refuse. No server can run on the volume while
   * the node's container is down: the lock is stale then, and removed.
   */
  private async clearStaleLock(node: NodeRef): Promise<void> {
    await this.containers.locked(node, async () => {
      const info = await this.containers.find(node, "node");
      if (info?.State.Running) return;
      const removed = await runContainerCommand(
        await this.containers.startTools(node),
        removeCommand([path.posix.join(PGDATA, "postmaster.pid")]),
        { user: PG_USER },
      );
      if (removed.exitCode !== 0) throw this.files.failed(node, "remove a stale postmaster.pid", removed);
    });
  }

  // --------------------------------------------------------------------- files (container-files.ts)

  readFile(node: NodeRef, relativePath: string): Promise<Buffer | null> {
    return this.files.readFile(node, relativePath);
  }

  readSmallFile(node: NodeRef, relativePath: string, maxBytes: number): Promise<SmallFileRead> {
    return this.files.readSmallFile(node, relativePath, maxBytes);
  }

  openRead(node: NodeRef, relativePath: string): Promise<Readable | null> {
    return this.files.openRead(node, relativePath);
  }

  readChunks(
    node: NodeRef,
    relativePath: string,
    options: ChunkedReadOptions,
    consume: (chunk: Buffer) => Promise<void>,
  ): Promise<boolean> {
    return this.files.readChunks(node, relativePath, options, consume);
  }

  readRanges(
    node: NodeRef,
    relativePath: string,
    ranges: ReadonlyArray<ByteRange>,
    options: ChunkedReadOptions,
    consume: (chunk: Buffer) => Promise<void>,
  ): Promise<boolean> {
    return this.files.readRanges(node, relativePath, ranges, options, consume);
  }

  writeFile(
    node: NodeRef,
    relativePath: string,
    content: string | Buffer,
    options?: { mode?: number; fresh?: boolean; parents?: WriteParents },
  ): Promise<void> {
    return this.files.writeFile(node, relativePath, content, options);
  }

  writeStream(
    node: NodeRef,
    relativePath: string,
    source: AsyncIterable<Buffer>,
    options?: { mode?: number; durable?: boolean; parents?: WriteParents },
  ): Promise<void> {
    return this.files.writeStream(node, relativePath, source, options);
  }

  makeDirectory(node: NodeRef, relativePath: string, options?: { mode?: number }): Promise<void> {
    return this.files.makeDirectory(node, relativePath, options);
  }

  listFiles(node: NodeRef, relativeDir: string): Promise<FileEntry[]> {
    return this.files.listFiles(node, relativeDir);
  }

  removeFiles(node: NodeRef, relativePaths: readonly string[]): Promise<void> {
    return this.files.removeFiles(node, relativePaths);
  }

  /** The container names this driver gives a node (for messages and docs/docker.md). */
  static namesOf(cluster: string, node: string): { container: string; tools: string; volume: string } {
    const naming = { cluster, node };
    return { container: containerName(naming, "node"), tools: containerName(naming, "tools"), volume: volumeName(naming) };
  }
}
