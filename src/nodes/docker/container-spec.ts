import path from "node:path";
import type Docker from "dockerode";

/**
 * What Relevo creates on a Docker engine, as data: names, labels and the
 * create options of a node's container and of its tools container. Pure.
 */

/** PGDATA of the official postgres image: where every node's volume is mounted. */
export const PGDATA = "/var/lib/postgresql/data";
/** The PostgreSQL OS user of the official image (uid 999). */
export const PG_USER = "postgres";

/** Labels on everything Relevo creates; containers carrying them are adopted (e.g. made by docker compose). */
export const LABELS = {
  cluster: "io.relevo.cluster",
  node: "io.relevo.node",
  /** "node": runs PostgreSQL; "tools": idle, for work on the data directory while the server is down. */
  role: "io.relevo.role",
  /** The Relevo data home that made it (for cleaning up; not part of the identity). */
  home: "io.relevo.home",
} as const;

export type ContainerRole = "node" | "tools";

export interface NodeNaming {
  readonly cluster: string;
  readonly node: string;
}

export function containerName(naming: NodeNaming, role: ContainerRole): string {
  return role === "node" ? `relevo-${naming.cluster}-${naming.node}` : `relevo-${naming.cluster}-${naming.node}-tools`;
}

export function volumeName(naming: NodeNaming): string {
  return `relevo-${naming.cluster}-${naming.node}-data`;
}

export function labelsFor(naming: NodeNaming, role: ContainerRole, home: string): Record<string, string> {
  return { [LABELS.cluster]: naming.cluster, [LABELS.node]: naming.node, [LABELS.role]: role, [LABELS.home]: home };
}

/** The filters that find a node's container (or tools container) by label, whoever created it. */
export function labelFilter(naming: NodeNaming, role: ContainerRole): Record<string, string[]> {
  return { label: [`${LABELS.cluster}=${naming.cluster}`, `${LABELS.node}=${naming.node}`, `${LABELS.role}=${role}`] };
}

/**
 * The data home a container was made by, when that is another home and it
 * no longer exists here (its labels name it); null otherwise. Such a
 * container is not adoptable: its mounts name that home's paths (the WAL
 * archive), so the engine would refuse to start it ("bind source path does
 * not exist"). Containers without the label (docker compose's) are adoptable. Pure.
 */
export function vanishedHome(labels: Readonly<Record<string, string>>, ownHome: string, exists: (home: string) => boolean): string | null {
  const home = labels[LABELS.home];
  // Relevo labels its containers with its home's absolute path; any other value (a compose file's, a hand-made label) names no home.
  if (!home || !path.isAbsolute(home) || home === ownHome || exists(home)) return null;
  return home;
}

/** A mount as the Engine API takes it. */
export interface MountSpec {
  readonly Type: "volume" | "bind";
  readonly Source: string;
  readonly Target: string;
  readonly ReadOnly: boolean;
}

export interface ContainerPlan {
  readonly naming: NodeNaming;
  readonly image: string;
  readonly home: string;
  /** PGDATA's volume (or bind mount) first, then anything else the node reads (the WAL archive). */
  readonly mounts: readonly MountSpec[];
}

/**
 * The node's container. PostgreSQL is PID 1 (the image's entrypoint execs
 * it), so it gets the signals directly: SIGINT is its fast shutdown (the
 * image's own STOPSIGNAL; SIGTERM would wait for every client). Host
 * networking: the server listens where its relevo.conf says (a loopback
 * port), like a local node. No restart policy: Relevo owns restarts, so a
 * fenced primary is never brought back by the engine.
 */
export function nodeContainerSpec(plan: ContainerPlan): Docker.ContainerCreateOptions {
  return {
    name: containerName(plan.naming, "node"),
    Image: plan.image,
    Cmd: ["postgres"],
    User: PG_USER,
    Env: [`PGDATA=${PGDATA}`],
    Labels: labelsFor(plan.naming, "node", plan.home),
    StopSignal: "SIGINT",
    HostConfig: {
      NetworkMode: "host",
      RestartPolicy: { Name: "no" },
      Mounts: plan.mounts.map((mount) => ({ ...mount })),
      // Parallel query and hash joins use POSIX shared memory; Docker's default /dev/shm is 64 MB.
      ShmSize: 256 * 1024 * 1024,
    },
  };
}

/**
 * The tools container: the same image and volume, idle (`sleep`), for the
 * work that needs the server down — initdb, pg_basebackup into the empty
 * volume, pg_rewind, pg_controldata, file access while stopped. In the
 * official image stopping PostgreSQL stops its container, so nothing can be
 * exec'ed there then. Two containers share the volume safely: this one
 * never runs a server.
 */
export function toolsContainerSpec(plan: ContainerPlan): Docker.ContainerCreateOptions {
  return {
    name: containerName(plan.naming, "tools"),
    Image: plan.image,
    Entrypoint: ["sleep", "infinity"],
    Cmd: [],
    User: PG_USER,
    Env: [`PGDATA=${PGDATA}`],
    Labels: labelsFor(plan.naming, "tools", plan.home),
    HostConfig: {
      NetworkMode: "host",
      RestartPolicy: { Name: "no" },
      Mounts: plan.mounts.map((mount) => ({ ...mount })),
    },
  };
}

/** The PostgreSQL stop signals: smart = SIGTERM, fast = SIGINT, immediate = SIGQUIT. */
export function stopSignalFor(mode: "smart" | "fast" | "immediate"): string {
  return mode === "smart" ? "SIGTERM" : mode === "fast" ? "SIGINT" : "SIGQUIT";
}
