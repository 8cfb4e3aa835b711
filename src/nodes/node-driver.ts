/**
 * The one door to a node's processes and files. Nothing outside src/nodes/
 * spawns a PostgreSQL tool, signals a postmaster or touches a data directory.
 *
 * The interface is shaped for both drivers:
 * - `local`: PostgreSQL clusters as processes of this machine.
 * - `docker`: one container per node; in the official image PostgreSQL is PID
 *   1, so stopping the server stops the container, and tools that need the
 *   server down (initdb, pg_basebackup into an empty volume, pg_rewind) run in
 *   a one-off container on the same volume. That is why `exec` says whether
 *   the tool needs the server (`online`) or must not depend on it (`offline`),
 *   and why paths handed to tools come from `dataDirectory()` (the path as the
 *   tool sees it), never from the caller's idea of the file system.
 */
import type { Readable } from "node:stream";
import type { OsIdentity } from "./os-user";

export type DriverKind = "local" | "docker";

/** What identifies a node to a driver. */
export interface NodeRef {
  readonly name: string;
  /** Address PostgreSQL listens on, as Relevo reaches it. */
  readonly host: string;
  readonly port: number;
}

export type StopMode = "smart" | "fast" | "immediate";

/** A node's TLS files as its server and the tools run beside it see them. */
export interface NodeTlsPaths {
  readonly certificate: string;
  readonly key: string;
  /** The CA's certificate: the server's ssl_ca_file, and the tools' sslrootcert. */
  readonly ca: string;
}

/** A server certificate and its key (PEM); the certificate's file may hold its chain after it. */
export interface ServerCertificate {
  readonly certificatePem: string;
  readonly keyPem: string;
}

/** A node's TLS files: its server's certificate and key, and the CA certificates it and its tools trust. */
export interface NodeTlsFiles extends ServerCertificate {
  readonly caPem: string;
}

/**
 * Where a driver gets the nodes' TLS material: the CA's certificate, and a
 * new server certificate for every address a node is reached at. A driver
 * issues one before every start of a server, so a node made, seeded,
 * rewound or restored by any path, and a node of a cluster from before
 * TLS, starts with its own current certificate.
 */
export interface NodeTlsSource {
  /** The CA certificates every server and tool trusts, as they are now (a CA rotation changes them). */
  readonly caPem: string;
  serverCertificate(node: NodeRef): Promise<ServerCertificate>;
  /**
   * Told by a driver once a start put a node's files in place
   * (`certificatePem`: what the server starts with): the record of what
   * each member serves. A renewal of a running node is recorded by its
   * holder once the node is seen serving it (src/cluster/node-certificate.ts).
   */
  installed?(node: NodeRef, certificatePem: string): Promise<void>;
  /**
   * `work` (a start: the node's files written, then its server started on
   * them) while no renewal of that node's certificate runs in any process
   * sharing the data home (see withHolderLock); `work` alone without a
   * record to keep.
   */
  exclusive?<T>(node: NodeRef, work: () => Promise<T>): Promise<T>;
}

/** `work` under `tls`'s exclusive hold on `node` (see NodeTlsSource.exclusive), or alone when it keeps none. */
export function exclusivelyFor<T>(tls: NodeTlsSource, node: NodeRef, work: () => Promise<T>): Promise<T> {
  return tls.exclusive ? tls.exclusive(node, work) : work();
}

/** The driver's view of a node's server process (or container). */
export type NodeProcessState =
  | { readonly phase: "absent" } // no storage at all: never provisioned, or destroyed
  | { readonly phase: "stopped" } // storage exists, no server running
  | { readonly phase: "running"; readonly pid: number }
  | { readonly phase: "paused"; readonly pid: number }; // frozen (SIGSTOP / docker pause)

export interface ChunkedReadOptions {
  readonly chunkSize: number;
  readonly inFlight: number;
}

/** A byte range of a file. */
export interface ByteRange {
  readonly offset: number;
  readonly length: number;
}

export type SmallFileRead =
  | { readonly state: "absent" }
  | { readonly state: "read"; readonly content: Buffer }
  | { readonly state: "too-large"; readonly size: number };

/**
 * What a write does when the file's directory is missing: "create" makes it
 * (and its parents, 0700, the PostgreSQL user's), "existing" fails (ENOENT).
 * A writer that runs on after its directory may have been removed (a WAL
 * feeder whose node was destroyed) says "existing": it must never bring
 * back a data directory someone removed.
 */
export type WriteParents = "create" | "existing";

export interface ExecOptions {
  /**
   * `online`: the tool talks to or lives next to the running server
   * (psql, pg_ctl promote). `offline`: the tool works on the data directory
   * while the server is down or absent (initdb, pg_basebackup into a new data
   * directory, pg_rewind, pg_controldata).
   */
  readonly mode: "online" | "offline";
  /** Extra environment (e.g. PGPASSWORD). Never logged. */
  readonly env?: Readonly<Record<string, string>>;
  readonly stdin?: string;
  readonly timeoutMs?: number;
  /** Return a non-zero exit instead of throwing COMMAND_FAILED. */
  readonly allowFailure?: boolean;
}

export interface ExecResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface FileEntry {
  /** Path relative to the data directory, '/'-separated. */
  readonly path: string;
  readonly type: "file" | "directory" | "symlink";
  readonly size: number;
  readonly mtimeMs: number;
}

/** A node's container as the engine sees it (docker driver). */
export interface ContainerView {
  readonly id: string;
  readonly name: string;
  readonly image: string;
  /** The engine's status: created, running, paused, restarting, exited, dead. */
  readonly status: string;
  /** The image's HEALTHCHECK verdict, null without one. */
  readonly health: string | null;
  readonly restartCount: number;
}

/** Facts the driver alone knows, shown in the topology. */
export interface DriverNodeView {
  readonly driver: DriverKind;
  readonly state: NodeProcessState;
  readonly dataDirectory: string;
  readonly logFile?: string;
  readonly containerId?: string;
  /** null: the docker driver found no container for the node (removed behind Relevo's back, or never made). */
  readonly container?: ContainerView | null;
}

export interface NodeDriver {
  readonly kind: DriverKind;

  /** Fails with MISSING_BINARY (or the driver's equivalent) naming what to install. */
  checkPrerequisites(): Promise<void>;

  /**
   * The OS identity that must own what the nodes' PostgreSQL reads outside
   * its data directory (the WAL archive its restore_command copies from):
   * this machine's PostgreSQL user (local), the image's (docker). null when
   * Relevo cannot hand files to another user (it does not run as root).
   */
  fileOwner(): Promise<OsIdentity | null>;

  /** Releases what the driver holds open (connections, helper processes); the nodes run on. */
  close(): Promise<void>;

  /**
   * Removes what the driver keeps beside a node to work on its data while
   * the server is down (the Docker driver's tools container, which holds the
   * node's volume); made again on the next need. For a service stopping its
   * nodes: nothing of Relevo's is left holding them (`docker compose down -v`
   * can then remove their volumes). Nothing for the local driver.
   */
  releaseHelpers(node: NodeRef): Promise<void>;

  /** Makes the node's storage exist (directory, volume, container); idempotent. */
  provision(node: NodeRef): Promise<void>;
  /** Removes the node and all its data; the server must be stopped or is killed. */
  destroy(node: NodeRef): Promise<void>;
  /**
   * Keeps what is left of a stopped node's storage under another name (its
   * name + `.` + `suffix`), never deleting any of it, so that the node is
   * absent and can be made again: remains that are not a cluster may still
   * be recovered by hand. Returns where they are now. A driver that cannot
   * rename its storage (Docker: a volume has no rename) refuses with
   * PRECONDITION_FAILED, naming the storage and what to do, and touches
   * nothing.
   */
  setAside(node: NodeRef, suffix: string): Promise<string>;
  /**
   * What the node's storage holds outside its data directory that the
   * driver did not put there (an operator's `data.broken`, a copy of
   * pg_wal kept beside it), as paths for messages; [] when nothing (or no
   * storage). destroy() would delete it: a caller that only means to remove
   * a lost node's own leftovers sets such storage aside instead. The data
   * directory's content is the caller's to judge (listFiles).
   */
  foreignRemains(node: NodeRef): Promise<string[]>;

  /** The data directory as PostgreSQL tools run by `exec` see it. */
  dataDirectory(node: NodeRef): string;

  /**
   * Where the node's server finds its certificate, key and CA, and the
   * tools `exec` runs its CA: outside the data directory, which
   * pg_basebackup, pg_rewind, backups and restores copy. The driver writes
   * them (from its NodeTlsSource) before every start of the server, the
   * key 0600 owned by the server's user; `exec` runs every tool with
   * libpq's sslmode=verify-full, sslrootcert=<ca> and channel_binding=require.
   */
  tlsPaths(node: NodeRef): NodeTlsPaths;

  /**
   * A new server certificate from the driver's NodeTlsSource and the CA
   * certificates as they are now, written where tlsPaths says by the same
   * path a start takes, the server running or not (a running server takes
   * them at its next configuration reload; its tools' trust is current at
   * once). Returns the files it replaced (null: the node had none), for
   * installTls to put back should the server refuse the new ones.
   */
  renewTls(node: NodeRef): Promise<{ readonly previous: NodeTlsFiles | null; readonly installed: NodeTlsFiles }>;

  /** Writes `files` as the node's TLS files (what renewTls replaced, put back). */
  installTls(node: NodeRef, files: NodeTlsFiles): Promise<void>;

  /**
   * The CA certificates as they are now written beside the node's own
   * certificate and key, which stay: a CA rotation's first step, so that
   * every member's tools and WAL receiver trust the new CA before any
   * server presents a certificate of it. Nothing for a node without files.
   */
  extendTrust(node: NodeRef): Promise<void>;

  /**
   * A file of this host, beside the node's storage and never in it, whose
   * exclusive creation claims the node's name while the node is being made
   * (a restore, a new replica): see claimNodeTarget. Shared by every process
   * of this data home (and, for a copy, of that directory).
   */
  claimFile(node: NodeRef): string;

  /**
   * The directory of this host that holds the node's storage (its data
   * directory and what the driver keeps beside it), whether or not it
   * exists now; null when the storage is no directory of this host (a
   * Docker volume). A restored copy never goes there (see
   * assertNotMemberDirectory).
   */
  nodeDirectory(node: NodeRef): string | null;

  start(node: NodeRef, options: { timeoutMs: number }): Promise<void>;
  stop(node: NodeRef, options: { mode: StopMode; timeoutMs: number }): Promise<void>;
  /** SIGKILL to the server and every process it started; returns once all are gone. */
  kill(node: NodeRef): Promise<void>;
  pause(node: NodeRef): Promise<void>;
  resume(node: NodeRef): Promise<void>;
  state(node: NodeRef): Promise<NodeProcessState>;
  describe(node: NodeRef): Promise<DriverNodeView>;

  /** Runs a PostgreSQL tool (argv[0] is its name, e.g. "pg_basebackup") as the PostgreSQL OS user. */
  exec(node: NodeRef, argv: readonly string[], options: ExecOptions): Promise<ExecResult>;

  /** Reads a file under the data directory; null when it does not exist. */
  readFile(node: NodeRef, relativePath: string): Promise<Buffer | null>;
  /**
   * Reads a file whole only when it is at most `maxBytes` long (a backup's
   * small-file path: one read, no stream); says so, reading nothing, when
   * it is longer (it may have grown since it was listed).
   */
  readSmallFile(node: NodeRef, relativePath: string, maxBytes: number): Promise<SmallFileRead>;
  /**
   * Writes atomically (temp + rename), owned by the PostgreSQL OS user, mode
   * 0600 unless told. `fresh`: the file must not exist yet and nothing reads
   * the directory meanwhile (a restore filling a new data directory, whose
   * whole is discarded on failure): written in place, in fewer steps; an
   * existing file is an error. `parents` (default "create"): see WriteParents.
   */
  writeFile(
    node: NodeRef,
    relativePath: string,
    content: string | Buffer,
    options?: { mode?: number; fresh?: boolean; parents?: WriteParents },
  ): Promise<void>;
  /** Streams a file under the data directory (never whole into memory); null when it does not exist. */
  openRead(node: NodeRef, relativePath: string): Promise<Readable | null>;
  /**
   * Reads a file in order, in chunks of at most `chunkSize`, into buffers the
   * driver reuses: `consume` may hold a chunk until the promise it returned
   * settles, and at most `inFlight` chunks are out at once. A large backup
   * allocates nothing per chunk then (a fresh buffer per MiB keeps the
   * garbage collector busy). false when the file does not exist.
   */
  readChunks(node: NodeRef, relativePath: string, options: ChunkedReadOptions, consume: (chunk: Buffer) => Promise<void>): Promise<boolean>;
  /**
   * Reads byte ranges of a file (ascending, not overlapping), in order, as
   * readChunks does: the blocks a differential or incremental backup takes.
   * Bytes past the file's end read as zeros (a relation truncated while it is
   * read: WAL replay truncates it again). false when the file does not exist.
   */
  readRanges(
    node: NodeRef,
    relativePath: string,
    ranges: ReadonlyArray<ByteRange>,
    options: ChunkedReadOptions,
    consume: (chunk: Buffer) => Promise<void>,
  ): Promise<boolean>;
  /**
   * Writes a stream (a Readable or any async iterable of buffers) to a file
   * under the data directory atomically, owned by the PostgreSQL OS user;
   * fsynced unless `durable: false` (a restore skips it: PostgreSQL syncs the
   * whole data directory before recovery starts). Each chunk is written
   * before the next is pulled, so a producer may reuse its buffers.
   */
  writeStream(
    node: NodeRef,
    relativePath: string,
    source: AsyncIterable<Buffer>,
    options?: { mode?: number; durable?: boolean; parents?: WriteParents },
  ): Promise<void>;
  /** Creates a directory (and its parents) under the data directory, owned by the PostgreSQL OS user. */
  makeDirectory(node: NodeRef, relativePath: string, options?: { mode?: number }): Promise<void>;
  /** Lists a directory under the data directory, recursively; [] when absent. */
  listFiles(node: NodeRef, relativeDir: string): Promise<FileEntry[]>;
  removeFiles(node: NodeRef, relativePaths: readonly string[]): Promise<void>;
}
