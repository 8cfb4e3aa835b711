import path from "node:path";
import type Docker from "dockerode";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { chownNoFollow } from "../../util/owned-files";
import { ErrorCode, RelevoError } from "../../errors";
import type { NodeRef, NodeTlsSource, ServerCertificate } from "../node-driver";
import type { OsIdentity } from "../os-user";
import { connectDocker, imageMissing, isStatus, translateEngineError, type DockerEndpoint, type EngineContext } from "./docker-client";
import { demultiplexBuffer } from "./docker-exec";
import { TLS_DIRECTORY, tlsArchive } from "./tls-files";
import {
  LABELS,
  PG_USER,
  PGDATA,
  labelFilter,
  nodeContainerSpec,
  toolsContainerSpec,
  vanishedHome,
  volumeName,
  type ContainerRole,
  type MountSpec,
  type NodeNaming,
} from "./container-spec";

export interface DockerDriverOptions {
  readonly endpoint: DockerEndpoint;
  readonly clusterName: string;
  readonly image: string;
  /** Relevo's data home: a label on what it creates. */
  readonly home: string;
  /**
   * Nodes whose PGDATA is a directory of the engine's host, bind-mounted,
   * instead of a volume (a restored copy the operator put in a directory):
   * node name → directory. Relevo must run on that host.
   */
  readonly dataDirectories?: Readonly<Record<string, string>>;
  /** The nodes' certificates, put into each node's container before every start (see tls-files.ts). */
  readonly tls: NodeTlsSource;
}

/**
 * A node's containers and storage on the engine: finding them by label
 * (adopting what someone else made), making them, the tools container, and
 * which container a command on the data directory runs in. The driver's
 * lifecycle and file operations are built on this (docker-driver.ts).
 */
export class NodeContainers {
  readonly docker: Docker;
  private readonly locks = new Map<string, Promise<unknown>>();
  private imageFacts: { owner: OsIdentity; version: string } | null = null;

  constructor(readonly options: DockerDriverOptions) {
    this.docker = connectDocker(options.endpoint);
  }

  /** Where the engine is, for error messages. */
  get endpointContext(): EngineContext {
    return { endpoint: this.options.endpoint.host || "unix:///var/run/docker.sock", tls: this.options.endpoint.certPath !== "" };
  }

  naming(node: NodeRef): NodeNaming {
    return { cluster: this.options.clusterName, node: node.name };
  }

  /** Calls the engine; its errors become Relevo's. */
  async engine<T>(action: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (error) {
      throw translateEngineError(error, { action, image: this.options.image, ...this.endpointContext });
    }
  }

  /** Lifecycle steps of one node run one at a time (two callers must not both create its container). */
  async locked<T>(node: NodeRef, work: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(node.name) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(work);
    this.locks.set(node.name, next);
    try {
      return await next;
    } finally {
      if (this.locks.get(node.name) === next) this.locks.delete(node.name);
    }
  }

  /**
   * The image's PostgreSQL version and OS user, read once by a one-off
   * container. The user's uid must own what nodes read outside their volume
   * (the WAL archive), whatever this machine's own postgres uid is.
   */
  async facts(): Promise<{ owner: OsIdentity; version: string }> {
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
        const logs = demultiplexBuffer(await container.logs({ stdout: true, stderr: true }));
        if (StatusCode !== 0)
          throw new RelevoError(ErrorCode.MissingBinary, `image ${this.options.image} has no PostgreSQL for Relevo: ${logs.trim()}`);
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

  /** The node's container (or tools container) by its labels, adopted whoever made it; null when there is none. */
  async find(node: NodeRef, role: ContainerRole): Promise<Docker.ContainerInspectInfo | null> {
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
    this.refuseLeftBehind(node, listed[0]!);
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

  /**
   * A container left by a data home that has since been deleted (same
   * cluster name, another home): refused, not adopted, with what to do.
   */
  private refuseLeftBehind(node: NodeRef, listed: Docker.ContainerInfo): void {
    const home = vanishedHome(listed.Labels ?? {}, this.options.home, existsSync);
    if (home === null) return;
    const container = listed.Names[0]?.replace(/^\//, "") ?? listed.Id;
    const volume = volumeName(this.naming(node));
    throw new RelevoError(
      ErrorCode.ContainerConflict,
      `container ${container} of node ${node.name} of cluster ${this.options.clusterName} was made by the Relevo data home ${home}, ` +
        `which no longer exists: it is not adopted (it mounts that home's paths). Remove it (docker rm -f ${container}; ` +
        `docker volume rm ${volume} too unless its data is wanted), or set RELEVO_CLUSTER_NAME to another name`,
      { details: { container, home } },
    );
  }

  async volumeExists(node: NodeRef): Promise<boolean> {
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

  /** Whether the node has a container or its data storage (else it is "absent"). */
  async hasStorage(node: NodeRef): Promise<boolean> {
    return (await this.find(node, "node")) !== null || (await this.volumeExists(node));
  }

  /** PGDATA's mount: an adopted container's own, a directory of the host, else the node's named volume. */
  private dataMount(node: NodeRef, adopted: Docker.ContainerInspectInfo | null): MountSpec {
    const directory = this.options.dataDirectories?.[node.name];
    if (directory) return { Type: "bind", Source: directory, Target: PGDATA, ReadOnly: false };
    const existing = adopted?.Mounts.find((mount) => mount.Destination === PGDATA);
    if (existing && (existing.Type === "volume" || existing.Type === "bind")) {
      return {
        Type: existing.Type,
        Source: existing.Type === "volume" ? existing.Name! : existing.Source,
        Target: PGDATA,
        ReadOnly: false,
      };
    }
    return { Type: "volume", Source: volumeName(this.naming(node)), Target: PGDATA, ReadOnly: false };
  }

  /**
   * The node's data, nothing else: a node never reads the repository (Relevo
   * feeds the WAL a recovery needs into its relevo_wal/, see node-wal.ts).
   */
  private mountsFor(node: NodeRef, adopted: Docker.ContainerInspectInfo | null): MountSpec[] {
    return [this.dataMount(node, adopted)];
  }

  /**
   * Makes sure the node has a container: adopts one carrying its labels, or
   * creates it (with its volume). A container of that name that is not the
   * node's is a clash, never taken over.
   */
  async ensureNodeContainer(node: NodeRef): Promise<Docker.ContainerInspectInfo> {
    const existing = await this.find(node, "node");
    if (existing) return existing;
    const mounts = this.mountsFor(node, null);
    const { owner } = await this.facts();
    if (mounts[0]!.Type === "bind") {
      // A bind source must exist; the image's postgres user must own it (PostgreSQL wants its data directory 0700, its own).
      await mkdir(mounts[0]!.Source, { recursive: true, mode: 0o700 });
      if (process.getuid?.() === 0) await chownNoFollow(mounts[0]!.Source, owner);
    } else {
      await this.engine(`create the volume of node ${node.name}`, () =>
        this.docker.createVolume({
          Name: mounts[0]!.Source,
          Labels: { [LABELS.cluster]: this.options.clusterName, [LABELS.node]: node.name, [LABELS.home]: this.options.home },
        }),
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
      throw translateEngineError(error, { action: `create container ${spec.name}`, image: this.options.image, ...this.endpointContext });
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
  async runningTools(node: NodeRef): Promise<Docker.Container> {
    return this.locked(node, () => this.startTools(node));
  }

  /** runningTools' work, for callers that hold the node's lock already. */
  async startTools(node: NodeRef): Promise<Docker.Container> {
    let info = await this.find(node, "tools");
    if (!info) {
      const adopted = await this.find(node, "node");
      if (!adopted && !(await this.volumeExists(node))) {
        throw new RelevoError(
          ErrorCode.NodeMissing,
          `node ${node.name} has neither a container nor a volume on the Docker engine; it must be created first`,
        );
      }
      const spec = toolsContainerSpec({
        naming: this.naming(node),
        image: this.options.image,
        home: this.options.home,
        mounts: this.mountsFor(node, adopted),
      });
      const created = await this.create(node, spec);
      info = await this.engine("inspect the tools container", () => created.inspect());
    }
    const container = this.docker.getContainer(info.Id);
    if (info.State.Paused) await this.engine("unpause the tools container", () => container.unpause());
    else if (!info.State.Running) {
      // The CA its tools (pg_basebackup, pg_rewind) verify servers with; no key: it runs no server.
      await this.putTlsFiles(node, container, null);
      await this.engine(`start the tools container of node ${node.name}`, () => container.start());
    }
    return container;
  }

  /**
   * The node's TLS files (the CA certificates alone without `server`) put
   * into `container`'s file system, running or not; `caPem`: the CA
   * certificates as the source has them now, unless given.
   */
  async putTlsFiles(
    node: NodeRef,
    container: Docker.Container,
    server: ServerCertificate | null,
    caPem: string = this.options.tls.caPem,
  ): Promise<void> {
    const archive = await tlsArchive({ caPem, server, owner: (await this.facts()).owner });
    await this.engine(`put the TLS files of node ${node.name} into its container`, () =>
      container.putArchive(archive, { path: path.posix.dirname(TLS_DIRECTORY) }),
    );
  }

  /** Where a command on the data directory runs: the node's container while it runs, else its tools container. */
  async workContainer(node: NodeRef): Promise<Docker.Container> {
    const info = await this.find(node, "node");
    if (info?.State.Running && !info.State.Paused) return this.docker.getContainer(info.Id);
    return this.runningTools(node);
  }
}
