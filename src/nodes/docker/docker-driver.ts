import type Docker from "dockerode";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { chown, mkdir, rm } from "node:fs/promises";
import path from "node:path";
import { Readable } from "node:stream";
import { ErrorCode, RelevoError } from "../../errors";
import { sleep } from "../../util/sleep";
import { consumeInChunks } from "../chunked-stream";
import { resolveInside } from "../data-paths";
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
  SmallFileRead,
  StopMode,
} from "../node-driver";
import type { OsIdentity } from "../os-user";
import { connectDocker, engineMessage, imageMissing, isStatus, translateEngineError, type DockerEndpoint } from "./docker-client";
import { demultiplexBuffer, runContainerCommand, startContainerCommand, type ContainerCommandOptions } from "./docker-exec";
import { AgentUnavailable, FileAgent } from "./file-agent";
import {
  LABELS,
  PG_USER,
  PGDATA,
  containerName,
  labelFilter,
  nodeContainerSpec,
  stopSignalFor,
  toolsContainerSpec,
  volumeName,
  type ContainerRole,
  type MountSpec,
  type NodeNaming,
} from "./container-spec";
import {
  ABSENT,
  EXISTS,
  TOO_LARGE,
  existsCommand,
  listCommand,
  makeDirectoryCommand,
  parseListing,
  readCommand,
  readRangesCommand,
  readSmallCommand,
  removeCommand,
  renameCommand,
  writeCommand,
} from "./file-commands";

/** Where the nodes find the WAL archive (their restore_command copies from it): the same path as Relevo's. */
export type RepositoryMount =
  | { readonly kind: "bind"; readonly path: string } // Relevo runs on the engine's host
  | { readonly kind: "volume"; readonly name: string; readonly path: string }; // Relevo runs in a container, repository in that volume

export interface DockerDriverOptions {
  readonly endpoint: DockerEndpoint;
  readonly clusterName: string;
  readonly image: string;
  /** Relevo's data home: a label on what it creates. */
  readonly home: string;
  readonly repository: RepositoryMount | null;
  /**
   * Nodes whose PGDATA is a directory of the engine's host, bind-mounted,
   * instead of a volume (a restored copy the operator put in a directory):
   * node name → directory. Relevo must run on that host.
   */
  readonly dataDirectories?: Readonly<Record<string, string>>;
}

/** readFile is for configuration-sized files: past this it streams through an exec of its own. */
const AGENT_READ_LIMIT = 16 * 1024 * 1024;

const AGENTS_PER_CONTAINER = 2;

/** Ranges per exec: a command line stays far below the kernel's argument limit. */
const RANGES_PER_COMMAND = 2000;

/**
 * Nodes as containers of a Docker engine, through its API (dockerode). One
 * container per node (PostgreSQL as PID 1, data in a named volume), created
 * by Relevo or adopted when one with the node's labels exists (docker
 * compose). Work on the data directory goes through `docker exec`: in the
 * node's container while the server runs, in its tools container otherwise
 * (see container-spec.ts). Nothing of a data directory is ever held whole in
 * memory: reads and writes stream through exec.
 */
export class DockerDriver implements NodeDriver {
  readonly kind = "docker" as const;
  private readonly docker: Docker;
  private readonly locks = new Map<string, Promise<unknown>>();
  private imageFacts: { owner: OsIdentity; version: string } | null = null;
  /** File agents per container (by id): they end with their container. */
  private readonly agents = new Map<string, FileAgent[]>();
  private readonly startingAgents = new Map<string, Promise<FileAgent>>();

  constructor(private readonly options: DockerDriverOptions) {
    this.docker = connectDocker(options.endpoint);
  }

  private get endpointLabel(): string {
    return this.options.endpoint.host || "unix:///var/run/docker.sock";
  }

  private naming(node: NodeRef): NodeNaming {
    return { cluster: this.options.clusterName, node: node.name };
  }

  /** Calls the engine; its errors become Relevo's. */
  private async engine<T>(action: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (error) {
      throw translateEngineError(error, { action, image: this.options.image, endpoint: this.endpointLabel });
    }
  }

  /** Lifecycle steps of one node run one at a time (two callers must not both create its container). */
  private async locked<T>(node: NodeRef, work: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(node.name) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(work);
    this.locks.set(node.name, next);
    try {
      return await next;
    } finally {
      if (this.locks.get(node.name) === next) this.locks.delete(node.name);
    }
  }

  async checkPrerequisites(): Promise<void> {
    await this.engine("reach the engine", () => this.docker.ping());
    await this.facts();
  }

  /**
   * The image's PostgreSQL version and OS user, read once by a one-off
   * container. The user's uid must own what nodes read outside their volume
   * (the WAL archive), whatever this machine's own postgres uid is.
   */
  private async facts(): Promise<{ owner: OsIdentity; version: string }> {
    if (this.imageFacts) return this.imageFacts;
    await this.engine(`inspect image ${this.options.image}`, async () => {
      try {
        await this.docker.getImage(this.options.image).inspect();
      } catch (error) {
        if (isStatus(error, 404)) throw imageMissing(this.options.image, error);
        throw error;
      }
    });
    const output = await this.engine(`run a one-off container of ${this.options.image}`, async () => {
      const container = await this.docker.createContainer({
        Image: this.options.image,
        Entrypoint: ["sh", "-c", `id -u ${PG_USER}; id -g ${PG_USER}; postgres --version`],
        Cmd: [],
        Labels: { [LABELS.cluster]: this.options.clusterName, [LABELS.home]: this.options.home },
        HostConfig: { NetworkMode: "none" },
      });
      try {
        await container.start();
        const { StatusCode } = (await container.wait()) as { StatusCode: number };
        const logs = demultiplexBuffer((await container.logs({ stdout: true, stderr: true })) as unknown as Buffer);
        if (StatusCode !== 0) throw new RelevoError(ErrorCode.MissingBinary, `image ${this.options.image} has no PostgreSQL for Relevo: ${logs.trim()}`);
        return logs;
      } finally {
        await container.remove({ force: true, v: true }).catch(() => undefined);
      }
    });
    const [uid, gid, version] = output.trim().split("\n");
    if (!/\(PostgreSQL\) 15\./.test(version ?? "")) {
      throw new RelevoError(
        ErrorCode.MissingBinary,
        `image ${this.options.image} runs "${(version ?? "").trim()}", Relevo needs PostgreSQL 15: set RELEVO_DOCKER_IMAGE (e.g. postgres:15)`,
        { details: { env: "RELEVO_DOCKER_IMAGE" } },
      );
    }
    this.imageFacts = { owner: { uid: Number(uid), gid: Number(gid), name: PG_USER }, version: version!.trim() };
    return this.imageFacts;
  }

  async close(): Promise<void> {
    for (const pool of this.agents.values()) for (const agent of pool) agent.stop();
    this.agents.clear();
  }

  async fileOwner(): Promise<OsIdentity | null> {
    // Only root can hand files to another uid; otherwise they stay Relevo's.
    if (process.getuid?.() !== 0) return null;
    return (await this.facts()).owner;
  }

  dataDirectory(): string {
    return PGDATA;
  }

  // ---------------------------------------------------------------- containers

  /** The node's container (or tools container) by its labels, adopted whoever made it; null when there is none. */
  private async find(node: NodeRef, role: ContainerRole): Promise<Docker.ContainerInspectInfo | null> {
    const naming = this.naming(node);
    const listed = await this.engine(`list the containers of node ${node.name}`, () =>
      this.docker.listContainers({ all: true, filters: labelFilter(naming, role) }),
    );
    if (listed.length > 1) {
      throw new RelevoError(
        ErrorCode.ContainerConflict,
        `${listed.length} containers carry the labels of node ${node.name} of cluster ${naming.cluster} ` +
          `(${listed.map((c) => c.Names.join(",")).join("; ")}): remove all but one`,
      );
    }
    if (listed.length === 0) return null;
    const info = await this.engine(`inspect the container of node ${node.name}`, async () => {
      try {
        return await this.docker.getContainer(listed[0]!.Id).inspect();
      } catch (error) {
        if (isStatus(error, 404)) return null; // removed meanwhile
        throw error;
      }
    });
    // Whenever a node's container is seen, running or not: no restart policy may outlive Relevo's first look.
    if (info && role === "node") await this.adopt(node, info);
    return info;
  }

  private async volumeExists(node: NodeRef): Promise<boolean> {
    const directory = this.options.dataDirectories?.[node.name];
    if (directory) return existsSync(directory);
    return this.engine(`inspect the volume of node ${node.name}`, async () => {
      try {
        await this.docker.getVolume(volumeName(this.naming(node))).inspect();
        return true;
      } catch (error) {
        if (isStatus(error, 404)) return false;
        throw error;
      }
    });
  }

  /** PGDATA's mount: an adopted container's own, a directory of the host, else the node's named volume. */
  private dataMount(node: NodeRef, adopted: Docker.ContainerInspectInfo | null): MountSpec {
    const directory = this.options.dataDirectories?.[node.name];
    if (directory) return { Type: "bind", Source: directory, Target: PGDATA, ReadOnly: false };
    const existing = adopted?.Mounts.find((mount) => mount.Destination === PGDATA);
    if (existing && (existing.Type === "volume" || existing.Type === "bind")) {
      return { Type: existing.Type, Source: existing.Type === "volume" ? existing.Name! : existing.Source, Target: PGDATA, ReadOnly: false };
    }
    return { Type: "volume", Source: volumeName(this.naming(node)), Target: PGDATA, ReadOnly: false };
  }

  private mountsFor(node: NodeRef, adopted: Docker.ContainerInspectInfo | null): MountSpec[] {
    const mounts = [this.dataMount(node, adopted)];
    const repository = this.options.repository;
    // A bind source must exist (the service makes the repository before any node; a bare driver may have none).
    if (repository && (repository.kind === "volume" || existsSync(repository.path))) {
      mounts.push({ Type: repository.kind, Source: repository.kind === "bind" ? repository.path : repository.name, Target: repository.path, ReadOnly: true });
    }
    return mounts;
  }

  /**
   * Makes sure the node has a container: adopts one carrying its labels, or
   * creates it (with its volume). A container of that name that is not the
   * node's is a clash, never taken over.
   */
  private async ensureNodeContainer(node: NodeRef): Promise<Docker.ContainerInspectInfo> {
    const existing = await this.find(node, "node");
    if (existing) return existing;
    const mounts = this.mountsFor(node, null);
    const { owner } = await this.facts();
    if (mounts[0]!.Type === "bind") {
      // A bind source must exist; the image's postgres user must own it (PostgreSQL wants its data directory 0700, its own).
      await mkdir(mounts[0]!.Source, { recursive: true, mode: 0o700 });
      if (process.getuid?.() === 0) await chown(mounts[0]!.Source, owner.uid, owner.gid);
    } else {
      await this.engine(`create the volume of node ${node.name}`, () =>
        this.docker.createVolume({ Name: mounts[0]!.Source, Labels: { [LABELS.cluster]: this.options.clusterName, [LABELS.node]: node.name, [LABELS.home]: this.options.home } }),
      );
    }
    const spec = nodeContainerSpec({ naming: this.naming(node), image: this.options.image, home: this.options.home, mounts });
    const created = await this.create(node, spec);
    return this.engine(`inspect the container of node ${node.name}`, () => created.inspect());
  }

  private async create(node: NodeRef, spec: Docker.ContainerCreateOptions): Promise<Docker.Container> {
    try {
      return await this.docker.createContainer(spec);
    } catch (error) {
      if (isStatus(error, 409)) {
        throw new RelevoError(
          ErrorCode.ContainerConflict,
          `a container named ${spec.name} exists but is not Relevo's for node ${node.name} of cluster ${this.options.clusterName} ` +
            `(its labels differ): remove or rename it, or set RELEVO_CLUSTER_NAME`,
          { cause: error, details: { container: spec.name } },
        );
      }
      throw translateEngineError(error, { action: `create container ${spec.name}`, image: this.options.image, endpoint: this.endpointLabel });
    }
  }

  /**
   * An adopted container keeps its configuration, except a restart policy:
   * the engine restarting a fenced primary on its own would bring back a
   * second writer. Relevo owns the restarts of the nodes it manages.
   */
  private async adopt(node: NodeRef, info: Docker.ContainerInspectInfo): Promise<void> {
    const policy = info.HostConfig.RestartPolicy?.Name ?? "no";
    if (policy !== "no" && policy !== "") {
      await this.engine(`clear the restart policy of ${info.Name}`, () =>
        this.docker.getContainer(info.Id).update({ RestartPolicy: { Name: "no", MaximumRetryCount: 0 } }),
      );
      info.HostConfig.RestartPolicy = { Name: "no", MaximumRetryCount: 0 };
    }
    const pgdata = info.Config.Env?.find((entry) => entry.startsWith("PGDATA="))?.slice("PGDATA=".length) ?? PGDATA;
    if (pgdata !== PGDATA) {
      throw new RelevoError(
        ErrorCode.InvalidConfig,
        `container ${info.Name} of node ${node.name} has PGDATA=${pgdata}; Relevo's nodes keep the official image's ${PGDATA}`,
      );
    }
  }

  /** The tools container, running (created on first need, on the node's data mount). */
  private async runningTools(node: NodeRef): Promise<Docker.Container> {
    return this.locked(node, () => this.startTools(node));
  }

  /** runningTools' work, for callers that hold the node's lock already. */
  private async startTools(node: NodeRef): Promise<Docker.Container> {
    let info = await this.find(node, "tools");
    if (!info) {
      const adopted = await this.find(node, "node");
      if (!adopted && !(await this.volumeExists(node))) {
        throw new RelevoError(ErrorCode.NodeMissing, `node ${node.name} has neither a container nor a volume on the Docker engine; it must be created first`);
      }
      const spec = toolsContainerSpec({ naming: this.naming(node), image: this.options.image, home: this.options.home, mounts: this.mountsFor(node, adopted) });
      const created = await this.create(node, spec);
      info = await this.engine("inspect the tools container", () => created.inspect());
    }
    const container = this.docker.getContainer(info.Id);
    if (info.State.Paused) await this.engine("unpause the tools container", () => container.unpause());
    else if (!info.State.Running) await this.engine(`start the tools container of node ${node.name}`, () => container.start());
    return container;
  }

  /** Where a command on the data directory runs: the node's container while it runs, else its tools container. */
  private async workContainer(node: NodeRef): Promise<Docker.Container> {
    const info = await this.find(node, "node");
    if (info?.State.Running && !info.State.Paused) return this.docker.getContainer(info.Id);
    return this.runningTools(node);
  }

  /**
   * Runs a command on the node's data directory. A container that stops
   * between the choice and the exec (409) is chosen again once.
   */
  private async run(node: NodeRef, cmd: readonly string[], options: Partial<ContainerCommandOptions> = {}): Promise<{ exitCode: number; stdout: Buffer; stderr: string }> {
    for (let attempt = 0; ; attempt += 1) {
      const container = await this.workContainer(node);
      try {
        return await runContainerCommand(container, cmd, { user: PG_USER, ...options });
      } catch (error) {
        if (attempt === 0 && isStatus(error, 409) && options.stdin === undefined) continue;
        throw translateEngineError(error, { action: `run ${cmd[0]} on node ${node.name}`, endpoint: this.endpointLabel });
      }
    }
  }

  // ----------------------------------------------------------------- lifecycle

  async provision(node: NodeRef): Promise<void> {
    await this.locked(node, () => this.ensureNodeContainer(node));
    // A new volume carries the image's directory mode (1777): PostgreSQL wants 0700.
    const chmod = await this.run(node, ["chmod", "700", PGDATA]);
    if (chmod.exitCode !== 0) throw new RelevoError(ErrorCode.DataDirNotOurs, `node ${node.name}: cannot take ${PGDATA} for PostgreSQL: ${chmod.stderr.trim()}`);
  }

  /**
   * Removes the node's data and what Relevo made for it. A container Relevo
   * adopted (made by someone else, e.g. docker compose) is stopped and left
   * in place with its volume emptied: it is not Relevo's to delete, and
   * started again it only waits to be initialised.
   */
  async destroy(node: NodeRef): Promise<void> {
    await this.locked(node, async () => {
      const nodeContainer = await this.find(node, "node");
      const adopted = nodeContainer !== null && nodeContainer.Config.Labels?.[LABELS.home] !== this.options.home;
      if (adopted) {
        await this.signal(this.docker.getContainer(nodeContainer.Id), "SIGKILL");
        if (!(await this.waitStopped(this.docker.getContainer(nodeContainer.Id), 10000))) {
          throw new RelevoError(ErrorCode.Timeout, `node ${node.name}: container ${nodeContainer.Name} survived SIGKILL for 10 s; its data is left as it is`);
        }
      }
      if (nodeContainer) this.stopAgentsOf(nodeContainer.Id);
      if (adopted) {
        const wiped = await runContainerCommand(await this.startTools(node), ["find", PGDATA, "-mindepth", "1", "-delete"], { user: PG_USER });
        if (wiped.exitCode !== 0) throw this.failed(node, "empty its data volume", wiped);
      }
      const tools = await this.find(node, "tools");
      if (tools) this.stopAgentsOf(tools.Id);
      for (const info of [tools, adopted ? null : nodeContainer]) {
        if (info) await this.engine(`remove container ${info.Name}`, () => this.docker.getContainer(info.Id).remove({ force: true, v: false }));
      }
      if (adopted) return;
      const directory = this.options.dataDirectories?.[node.name];
      if (directory) return rm(directory, { recursive: true, force: true });
      await this.engine(`remove the volume of node ${node.name}`, async () => {
        try {
          await this.docker.getVolume(volumeName(this.naming(node))).remove({ force: true });
        } catch (error) {
          if (!isStatus(error, 404)) throw error;
        }
      });
    });
  }

  async state(node: NodeRef): Promise<NodeProcessState> {
    const info = await this.find(node, "node");
    if (info?.State.Running) return info.State.Paused ? { phase: "paused", pid: info.State.Pid } : { phase: "running", pid: info.State.Pid };
    // A container removed behind Relevo's back leaves the data in its volume: stopped, recreated on start.
    if (info || (await this.volumeExists(node))) return { phase: "stopped" };
    return { phase: "absent" };
  }

  async describe(node: NodeRef): Promise<DriverNodeView> {
    const info = await this.find(node, "node");
    const state = await this.state(node);
    return {
      driver: this.kind,
      state,
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
    const info = await this.locked(node, () => this.ensureNodeContainer(node));
    const container = this.docker.getContainer(info.Id);
    await this.engine(`start container ${info.Name}`, async () => {
      try {
        await container.start();
      } catch (error) {
        if (!isStatus(error, 304)) throw error; // 304: already started
      }
    });
    await this.waitUntilReady(node, container, options.timeoutMs);
  }

  /**
   * Ready as pg_ctl -w means it: postmaster.pid's status line says "ready"
   * (or "standby" for a hot standby). A container that exits meanwhile
   * failed to start: its log says why.
   */
  private async waitUntilReady(node: NodeRef, container: Docker.Container, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const info = await this.engine("inspect a starting container", () => container.inspect());
      if (!info.State.Running) {
        throw new RelevoError(ErrorCode.CommandFailed, `node ${node.name} did not start (container exited with ${info.State.ExitCode}): ${await this.logTail(container)}`, {
          details: { container: info.Name, exitCode: info.State.ExitCode },
        });
      }
      const pidFile = await runContainerCommand(container, readCommand(path.posix.join(PGDATA, "postmaster.pid")), { user: PG_USER }).catch(() => null);
      const lines = pidFile?.exitCode === 0 ? pidFile.stdout.toString("utf8").split("\n") : [];
      // A killed server's postmaster.pid says "ready" too: only this start's counts (line 3, its start time).
      const startedAt = Math.floor(Date.parse(info.State.StartedAt) / 1000);
      const current = Number(lines[2]) >= startedAt;
      if (current && (lines[7]?.trim() === "ready" || lines[7]?.trim() === "standby")) return;
      if (Date.now() > deadline) {
        throw new RelevoError(ErrorCode.Timeout, `node ${node.name} did not accept connections within ${timeoutMs} ms: ${await this.logTail(container)}`);
      }
      await sleep(100);
    }
  }

  async stop(node: NodeRef, options: { mode: StopMode; timeoutMs: number }): Promise<void> {
    const info = await this.find(node, "node");
    if (!info?.State.Running) return;
    const container = this.docker.getContainer(info.Id);
    if (info.State.Paused) await this.resume(node);
    await this.signal(container, stopSignalFor(options.mode));
    if (!(await this.waitStopped(container, options.timeoutMs))) {
      throw new RelevoError(ErrorCode.CommandFailed, `node ${node.name} did not stop (${options.mode}) within ${options.timeoutMs} ms`);
    }
    this.stopAgentsOf(info.Id);
  }

  async kill(node: NodeRef): Promise<void> {
    const info = await this.find(node, "node");
    if (!info?.State.Running) return;
    const container = this.docker.getContainer(info.Id);
    // SIGKILL to PID 1 of a container ends every process in it: no backend outlives the postmaster.
    await this.signal(container, "SIGKILL");
    if (info.State.Paused) await this.engine("thaw a killed container", () => container.unpause()).catch(() => undefined);
    if (!(await this.waitStopped(container, 10000))) throw new RelevoError(ErrorCode.Timeout, `node ${node.name}: container ${info.Name} survived SIGKILL for 10 s`);
    this.stopAgentsOf(info.Id);
  }

  private async signal(container: Docker.Container, signal: string): Promise<void> {
    await this.engine(`send ${signal}`, async () => {
      try {
        await container.kill({ signal });
      } catch (error) {
        if (!isStatus(error, 409)) throw error; // 409: not running any more
      }
    });
  }

  private async waitStopped(container: Docker.Container, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() <= deadline) {
      const info = await this.engine("inspect a stopping container", async () => {
        try {
          return await container.inspect();
        } catch (error) {
          if (isStatus(error, 404)) return null;
          throw error;
        }
      });
      if (!info?.State.Running) return true;
      await sleep(50);
    }
    return false;
  }

  async pause(node: NodeRef): Promise<void> {
    const info = await this.find(node, "node");
    if (!info?.State.Running) throw new RelevoError(ErrorCode.PreconditionFailed, `cannot pause node ${node.name}: it is not running`);
    if (info.State.Paused) return;
    // The cgroup freezer stops every process of the container at once: the whole server hangs.
    await this.engine(`pause ${info.Name}`, () => this.docker.getContainer(info.Id).pause());
  }

  async resume(node: NodeRef): Promise<void> {
    const info = await this.find(node, "node");
    if (!info?.State.Paused) return;
    await this.engine(`unpause ${info.Name}`, () => this.docker.getContainer(info.Id).unpause());
  }

  private async logTail(container: Docker.Container): Promise<string> {
    try {
      const logs = demultiplexBuffer((await container.logs({ stdout: true, stderr: true, tail: 8 })) as unknown as Buffer);
      return logs.trim().split("\n").slice(-5).join(" | ") || "no log";
    } catch (error) {
      return `no log (${engineMessage(error)})`;
    }
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
    const result = await this.run(node, cmd, { env: options.env, stdin: options.stdin });
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
    await this.locked(node, async () => {
      const info = await this.find(node, "node");
      if (info?.State.Running) return;
      const removed = await runContainerCommand(await this.startTools(node), removeCommand([path.posix.join(PGDATA, "postmaster.pid")]), { user: PG_USER });
      if (removed.exitCode !== 0) throw this.failed(node, "remove a stale postmaster.pid", removed);
    });
  }

  // --------------------------------------------------------------------- files

  /**
   * The least busy of the container's file agents; a second one is started
   * while the first is busy (two cores: two requests' processes at a time).
   */
  private async agentFor(node: NodeRef): Promise<FileAgent> {
    const container = await this.workContainer(node);
    const pool = (this.agents.get(container.id) ?? []).filter((agent) => agent.alive);
    this.agents.set(container.id, pool);
    const idle = pool.find((agent) => agent.waiting === 0);
    if (idle) return idle;
    const starting = this.startingAgents.get(container.id);
    if (starting) return starting;
    if (pool.length >= AGENTS_PER_CONTAINER) return pool.reduce((best, agent) => (agent.waiting < best.waiting ? agent : best));
    const started = FileAgent.start(container, PG_USER).then((agent) => {
      this.agents.set(container.id, [...(this.agents.get(container.id) ?? []).filter((other) => other.alive), agent]);
      return agent;
    });
    this.startingAgents.set(container.id, started);
    return started.finally(() => this.startingAgents.delete(container.id));
  }

  /** The agents of a container that stopped or went: their connections go with it. */
  private stopAgentsOf(containerId: string): void {
    for (const agent of this.agents.get(containerId) ?? []) agent.stop();
    this.agents.delete(containerId);
  }

  /**
   * Small-file work through the container's file agent; when the agent
   * cannot answer (its container stopped meanwhile, a write failed) the same
   * work runs over an exec of its own, which also gives the real error.
   */
  private async viaAgent<T>(node: NodeRef, work: (agent: FileAgent) => Promise<T>, fallback: (failure: AgentUnavailable | null) => Promise<T>): Promise<T> {
    let agent: FileAgent;
    try {
      agent = await this.agentFor(node);
    } catch (error) {
      if (error instanceof RelevoError) throw error;
      return fallback(null);
    }
    try {
      return await work(agent);
    } catch (error) {
      if (error instanceof AgentUnavailable) return fallback(error);
      throw error;
    }
  }

  private inside(relativePath: string): string {
    return resolveInside(PGDATA, relativePath, path.posix);
  }

  private failed(node: NodeRef, what: string, result: { exitCode: number; stderr: string }): RelevoError {
    return new RelevoError(ErrorCode.CommandFailed, `node ${node.name}: cannot ${what}: ${result.stderr.trim() || `exit ${result.exitCode}`}`, {
      details: { exitCode: result.exitCode, stderr: result.stderr.slice(-4000) },
    });
  }

  async readFile(node: NodeRef, relativePath: string): Promise<Buffer | null> {
    const file = this.inside(relativePath);
    if ((await this.state(node)).phase === "absent") return null;
    const read = await this.viaAgent(
      node,
      (agent) => agent.readSmall(file, AGENT_READ_LIMIT),
      async (): Promise<SmallFileRead> => ({ state: "too-large", size: -1 }),
    );
    if (read.state === "absent") return null;
    if (read.state === "read") return read.content;
    const result = await this.run(node, readCommand(file));
    if (result.exitCode === ABSENT) return null;
    if (result.exitCode !== 0) throw this.failed(node, `read ${relativePath}`, result);
    return result.stdout;
  }

  async readSmallFile(node: NodeRef, relativePath: string, maxBytes: number): Promise<SmallFileRead> {
    const file = this.inside(relativePath);
    return this.viaAgent(
      node,
      (agent) => agent.readSmall(file, maxBytes),
      async () => {
        const result = await this.run(node, readSmallCommand(file, maxBytes));
        if (result.exitCode === ABSENT) return { state: "absent" };
        if (result.exitCode === TOO_LARGE) return { state: "too-large", size: Number(result.stdout.toString("utf8").trim()) };
        if (result.exitCode !== 0) throw this.failed(node, `read ${relativePath}`, result);
        // Grown between stat and cat: longer than asked after all.
        if (result.stdout.length > maxBytes) return { state: "too-large", size: result.stdout.length };
        return { state: "read", content: result.stdout };
      },
    );
  }

  async openRead(node: NodeRef, relativePath: string): Promise<Readable | null> {
    const file = this.inside(relativePath);
    const exists = await this.run(node, existsCommand(file));
    if (exists.exitCode === ABSENT) return null;
    if (exists.exitCode !== 0) throw this.failed(node, `read ${relativePath}`, exists);
    const started = await this.startStream(node, readCommand(file));
    const failed = this.failed.bind(this);
    return Readable.from(
      (async function* () {
        yield* started.stdout;
        const end = await started.finished;
        if (end.exitCode !== 0) throw failed(node, `read ${relativePath}`, end);
      })(),
      { objectMode: false },
    );
  }

  private async startStream(node: NodeRef, cmd: readonly string[]): ReturnType<typeof startContainerCommand> {
    const container = await this.workContainer(node);
    return this.engine(`run ${cmd[0]} on node ${node.name}`, () => startContainerCommand(container, cmd, { user: PG_USER }));
  }

  /** Streams a command's stdout through consumeInChunks; false when it says the file is absent. */
  private async streamInChunks(
    node: NodeRef,
    cmd: readonly string[],
    what: string,
    options: ChunkedReadOptions,
    consume: (chunk: Buffer) => Promise<void>,
    segments?: readonly number[],
  ): Promise<boolean> {
    const started = await this.startStream(node, cmd);
    let consumed: unknown = null;
    try {
      await consumeInChunks(started.stdout, options, consume, segments);
    } catch (error) {
      consumed = error;
    }
    const end = await started.finished;
    if (end.exitCode === ABSENT) return false;
    if (consumed !== null) throw consumed;
    if (end.exitCode !== 0) throw this.failed(node, what, end);
    return true;
  }

  async readChunks(node: NodeRef, relativePath: string, options: ChunkedReadOptions, consume: (chunk: Buffer) => Promise<void>): Promise<boolean> {
    return this.streamInChunks(node, readCommand(this.inside(relativePath)), `read ${relativePath}`, options, consume);
  }

  async readRanges(
    node: NodeRef,
    relativePath: string,
    ranges: ReadonlyArray<ByteRange>,
    options: ChunkedReadOptions,
    consume: (chunk: Buffer) => Promise<void>,
  ): Promise<boolean> {
    const file = this.inside(relativePath);
    if (ranges.length === 0) return (await this.run(node, existsCommand(file))).exitCode !== ABSENT;
    for (let start = 0; start < ranges.length; start += RANGES_PER_COMMAND) {
      const batch = ranges.slice(start, start + RANGES_PER_COMMAND);
      const found = await this.streamInChunks(node, readRangesCommand(file, batch), `read ranges of ${relativePath}`, options, consume, batch.map((range) => range.length));
      if (!found) {
        if (start === 0) return false;
        // Removed after its first ranges were read: the rest reads as zeros, as past a file's end.
        for (const range of ranges.slice(start)) await consumeInChunks([Buffer.alloc(range.length)], options, consume);
        return true;
      }
    }
    return true;
  }

  async writeFile(node: NodeRef, relativePath: string, content: string | Buffer, options: { mode?: number; fresh?: boolean } = {}): Promise<void> {
    const file = this.inside(relativePath);
    const bytes = typeof content === "string" ? Buffer.from(content, "utf8") : content;
    const settings = { mode: options.mode ?? 0o600, fresh: options.fresh ?? false };
    const outcome = await this.viaAgent(
      node,
      (agent) => agent.write(file, bytes, settings),
      async (failure) => {
        // A fresh write the agent answered as failed had made the file itself: removed, or asked again it would exist.
        if (settings.fresh && failure?.answered) await this.run(node, removeCommand([file]));
        return this.writeThroughExec(node, relativePath, bytes, { ...settings, durable: true });
      },
    );
    if (outcome === "exists") throw new RelevoError(ErrorCode.CommandFailed, `node ${node.name}: cannot write ${relativePath}: it exists already`);
  }

  async writeStream(node: NodeRef, relativePath: string, source: AsyncIterable<Buffer>, options: { mode?: number; durable?: boolean } = {}): Promise<void> {
    await this.writeThroughExec(node, relativePath, source, { mode: options.mode ?? 0o600, fresh: false, durable: options.durable ?? true });
  }

  /**
   * A write over an exec of its own: into a temp file, renamed only once the
   * whole input went in and the command succeeded (a source that fails
   * midway ends the command's input as if it were complete); a fresh write
   * goes straight into its file, which must not exist.
   */
  private async writeThroughExec(
    node: NodeRef,
    relativePath: string,
    input: Buffer | AsyncIterable<Buffer>,
    options: { mode: number; fresh: boolean; durable: boolean },
  ): Promise<"written" | "exists"> {
    const file = this.inside(relativePath);
    const target = options.fresh ? file : `${file}.relevo-tmp-${randomBytes(6).toString("hex")}`;
    const discard = async (): Promise<void> => {
      if (!options.fresh) await this.run(node, removeCommand([target])).catch(() => undefined);
    };
    let result: { exitCode: number; stderr: string };
    try {
      result = await this.run(node, writeCommand(target, options), { stdin: input });
    } catch (error) {
      await discard();
      throw error;
    }
    if (result.exitCode === EXISTS) return "exists";
    if (result.exitCode !== 0) {
      await discard();
      throw this.failed(node, `write ${relativePath}`, result);
    }
    if (options.fresh) return "written";
    await this.viaAgent(
      node,
      (agent) => agent.rename(target, file),
      async () => {
        const moved = await this.run(node, renameCommand(target, file));
        if (moved.exitCode !== 0) {
          await discard();
          throw this.failed(node, `write ${relativePath}`, moved);
        }
      },
    );
    return "written";
  }

  async makeDirectory(node: NodeRef, relativePath: string, options: { mode?: number } = {}): Promise<void> {
    const directory = this.inside(relativePath);
    const mode = options.mode ?? 0o700;
    await this.viaAgent(
      node,
      (agent) => agent.makeDirectory(directory, mode),
      async () => {
        const result = await this.run(node, makeDirectoryCommand(PGDATA, directory, mode));
        if (result.exitCode !== 0) throw this.failed(node, `make directory ${relativePath}`, result);
      },
    );
  }

  async listFiles(node: NodeRef, relativeDir: string): Promise<FileEntry[]> {
    const directory = this.inside(relativeDir);
    if ((await this.state(node)).phase === "absent") return [];
    const result = await this.run(node, listCommand(directory));
    if (result.exitCode !== 0) throw this.failed(node, `list ${relativeDir}`, result);
    const prefix = path.posix.relative(PGDATA, directory);
    return parseListing(result.stdout)
      .map((entry) => ({
        path: prefix ? `${prefix}/${entry.relative}` : entry.relative,
        type: entry.type,
        size: entry.size,
        mtimeMs: entry.mtimeMs,
      }))
      .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  }

  async removeFiles(node: NodeRef, relativePaths: readonly string[]): Promise<void> {
    if (relativePaths.length === 0) return;
    const files = relativePaths.map((relativePath) => this.inside(relativePath));
    const result = await this.run(node, removeCommand(files));
    if (result.exitCode !== 0) throw this.failed(node, `remove ${relativePaths.join(", ")}`, result);
  }

  /** The container names this driver gives a node (for messages and the README). */
  static namesOf(cluster: string, node: string): { container: string; tools: string; volume: string } {
    const naming = { cluster, node };
    return { container: containerName(naming, "node"), tools: containerName(naming, "tools"), volume: volumeName(naming) };
  }
}
