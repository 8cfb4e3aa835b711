import { randomBytes } from "node:crypto";
import path from "node:path";
import { Readable } from "node:stream";
import { ErrorCode, RelevoError } from "../../errors";
import { consumeInChunks } from "../chunked-stream";
import { resolveInside } from "../data-paths";
import type { ByteRange, ChunkedReadOptions, FileEntry, NodeRef, SmallFileRead, WriteParents } from "../node-driver";
import { isStatus, translateEngineError } from "./docker-client";
import { runContainerCommand, startContainerCommand, type ContainerCommandOptions } from "./docker-exec";
import { AgentUnavailable, FileAgent } from "./file-agent";
import { PG_USER, PGDATA } from "./container-spec";
import type { NodeContainers } from "./node-containers";
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

/** readFile is for configuration-sized files: past this it streams through an exec of its own. */
const AGENT_READ_LIMIT = 16 * 1024 * 1024;

const AGENTS_PER_CONTAINER = 2;

/** Ranges per exec: a command line stays far below the kernel's argument limit. */
const RANGES_PER_COMMAND = 2000;

/**
 * A node's data directory through `docker exec` (the Docker driver's file
 * operations): in the node's container while the server runs, in its tools
 * container otherwise; small files through the containers' file agents,
 * streams through an exec each. Nothing is ever held whole in memory.
 */
export class ContainerFiles {
  /** File agents per container (by id): they end with their container. */
  private readonly agents = new Map<string, FileAgent[]>();
  private readonly startingAgents = new Map<string, Promise<FileAgent>>();

  constructor(private readonly containers: NodeContainers) {}

  /** Ends every file agent (their connections would keep the process alive). */
  close(): void {
    for (const pool of this.agents.values()) for (const agent of pool) agent.stop();
    this.agents.clear();
  }

  /**
   * Runs a command on the node's data directory. A container that stops
   * between the choice and the exec (409) is chosen again once.
   */
  async run(
    node: NodeRef,
    cmd: readonly string[],
    options: Partial<ContainerCommandOptions> = {},
  ): Promise<{ exitCode: number; stdout: Buffer; stderr: string }> {
    for (let attempt = 0; ; attempt += 1) {
      const container = await this.containers.workContainer(node);
      try {
        return await runContainerCommand(container, cmd, { user: PG_USER, ...options });
      } catch (error) {
        if (attempt === 0 && isStatus(error, 409) && options.stdin === undefined) continue;
        throw translateEngineError(error, { action: `run ${cmd[0]} on node ${node.name}`, ...this.containers.endpointContext });
      }
    }
  }

  /**
   * The least busy of the container's file agents; a second one is started
   * while the first is busy (two cores: two requests' processes at a time).
   */
  private async agentFor(node: NodeRef): Promise<FileAgent> {
    const container = await this.containers.workContainer(node);
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
  stopAgentsOf(containerId: string): void {
    for (const agent of this.agents.get(containerId) ?? []) agent.stop();
    this.agents.delete(containerId);
  }

  /**
   * Small-file work through the container's file agent; when the agent
   * cannot answer (its container stopped meanwhile, a write failed) the same
   * work runs over an exec of its own, which also gives the real error.
   */
  private async viaAgent<T>(
    node: NodeRef,
    work: (agent: FileAgent) => Promise<T>,
    fallback: (failure: AgentUnavailable | null) => Promise<T>,
  ): Promise<T> {
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

  failed(node: NodeRef, what: string, result: { exitCode: number; stderr: string }): RelevoError {
    return new RelevoError(
      ErrorCode.CommandFailed,
      `node ${node.name}: cannot ${what}: ${result.stderr.trim() || `exit ${result.exitCode}`}`,
      {
        details: { exitCode: result.exitCode, stderr: result.stderr.slice(-4000) },
      },
    );
  }

  async readFile(node: NodeRef, relativePath: string): Promise<Buffer | null> {
    const file = this.inside(relativePath);
    if (!(await this.containers.hasStorage(node))) return null;
    const read = await this.viaAgent(
      node,
      (agent) => agent.readSmall(file, AGENT_READ_LIMIT),
      () => Promise.resolve<SmallFileRead>({ state: "too-large", size: -1 }),
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
    const container = await this.containers.workContainer(node);
    return this.containers.engine(`run ${cmd[0]} on node ${node.name}`, () => startContainerCommand(container, cmd, { user: PG_USER }));
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
    let failure: { readonly error: unknown } | null = null;
    try {
      await consumeInChunks(started.stdout, options, consume, segments);
    } catch (error) {
      failure = { error };
    }
    const end = await started.finished;
    if (end.exitCode === ABSENT) return false;
    if (failure !== null) throw failure.error;
    if (end.exitCode !== 0) throw this.failed(node, what, end);
    return true;
  }

  async readChunks(
    node: NodeRef,
    relativePath: string,
    options: ChunkedReadOptions,
    consume: (chunk: Buffer) => Promise<void>,
  ): Promise<boolean> {
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
      const found = await this.streamInChunks(
        node,
        readRangesCommand(file, batch),
        `read ranges of ${relativePath}`,
        options,
        consume,
        batch.map((range) => range.length),
      );
      if (!found) {
        if (start === 0) return false;
        // Removed after its first ranges were read: the rest reads as zeros, as past a file's end.
        for (const range of ranges.slice(start)) await consumeInChunks([Buffer.alloc(range.length)], options, consume);
        return true;
      }
    }
    return true;
  }

  async writeFile(
    node: NodeRef,
    relativePath: string,
    content: string | Buffer,
    options: { mode?: number; fresh?: boolean; parents?: WriteParents } = {},
  ): Promise<void> {
    const file = this.inside(relativePath);
    const bytes = typeof content === "string" ? Buffer.from(content, "utf8") : content;
    const settings = { mode: options.mode ?? 0o600, fresh: options.fresh ?? false };
    // The agent's write makes missing parents: a write that must not goes over an exec of its own.
    const outcome =
      options.parents === "existing"
        ? await this.writeThroughExec(node, relativePath, bytes, { ...settings, durable: true, parents: "existing" })
        : await this.viaAgent(
            node,
            (agent) => agent.write(file, bytes, settings),
            async (failure) => {
              // A fresh write the agent answered as failed had made the file itself: removed, or asked again it would exist.
              if (settings.fresh && failure?.answered) await this.run(node, removeCommand([file]));
              return this.writeThroughExec(node, relativePath, bytes, { ...settings, durable: true });
            },
          );
    if (outcome === "exists")
      throw new RelevoError(ErrorCode.CommandFailed, `node ${node.name}: cannot write ${relativePath}: it exists already`);
  }

  async writeStream(
    node: NodeRef,
    relativePath: string,
    source: AsyncIterable<Buffer>,
    options: { mode?: number; durable?: boolean; parents?: WriteParents } = {},
  ): Promise<void> {
    await this.writeThroughExec(node, relativePath, source, {
      mode: options.mode ?? 0o600,
      fresh: false,
      durable: options.durable ?? true,
      parents: options.parents,
    });
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
    options: { mode: number; fresh: boolean; durable: boolean; parents?: WriteParents },
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
      (agent) => agent.rename(target, file, { durable: options.durable }),
      async () => {
        const moved = await this.run(node, renameCommand(target, file, { durable: options.durable }));
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
    if (!(await this.containers.hasStorage(node))) return [];
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
}
