import path from "node:path";
import { extract, pack } from "tar-stream";
import type { NodeTlsFiles, NodeTlsPaths, ServerCertificate } from "../node-driver";
import type { OsIdentity } from "../os-user";
import { PGDATA } from "./container-spec";

/**
 * Where a node container's server finds its TLS files, and its tools the
 * CA: in the container's own file system, beside PGDATA and not in its
 * volume. The volume is the data directory, which pg_basebackup, pg_rewind,
 * backups and restores copy; a key there would travel with every copy, and
 * a new replica's empty volume could not hold the CA its pg_basebackup
 * needs. They are written through the engine (an archive put into the
 * container, never a bind mount: a remote engine cannot see Relevo's
 * files), into the node's container before every start and the CA into its
 * tools container when that starts; a container made again gets them again.
 */
export const TLS_DIRECTORY = path.posix.join(path.posix.dirname(PGDATA), "relevo-tls");

export function containerTlsPaths(): NodeTlsPaths {
  return {
    certificate: path.posix.join(TLS_DIRECTORY, "server.crt"),
    key: path.posix.join(TLS_DIRECTORY, "server.key"),
    ca: path.posix.join(TLS_DIRECTORY, "ca.crt"),
  };
}

/**
 * The tar archive the engine extracts at TLS_DIRECTORY's parent: the
 * directory (0700) and the files, owned by the image's PostgreSQL user (the
 * engine applies the archive's owners), the key 0600. `server`: absent for
 * a tools container, which runs no server and gets the CA alone.
 */
export async function tlsArchive(options: { caPem: string; server: ServerCertificate | null; owner: OsIdentity }): Promise<Buffer> {
  const archive = pack();
  const owner = { uid: options.owner.uid, gid: options.owner.gid };
  const name = (file: string): string => path.posix.relative(path.posix.dirname(TLS_DIRECTORY), file);
  const paths = containerTlsPaths();
  archive.entry({ name: name(TLS_DIRECTORY), type: "directory", mode: 0o700, ...owner });
  archive.entry({ name: name(paths.ca), mode: 0o644, ...owner }, options.caPem);
  if (options.server) {
    archive.entry({ name: name(paths.certificate), mode: 0o644, ...owner }, options.server.certificatePem);
    archive.entry({ name: name(paths.key), mode: 0o600, ...owner }, options.server.keyPem);
  }
  archive.finalize();
  const chunks: Buffer[] = [];
  for await (const chunk of archive) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/**
 * The node's TLS files from the archive of TLS_DIRECTORY the engine
 * returns (its entries named `relevo-tls/…`); null without a certificate
 * and a key.
 */
export async function tlsFilesFromArchive(archive: NodeJS.ReadableStream): Promise<NodeTlsFiles | null> {
  const files = new Map<string, string>();
  const reader = extract();
  archive.pipe(reader);
  for await (const entry of reader) {
    const chunks: Buffer[] = [];
    for await (const chunk of entry) chunks.push(chunk as Buffer);
    if (entry.header.type === "file") files.set(path.posix.basename(entry.header.name), Buffer.concat(chunks).toString("utf8"));
  }
  const paths = containerTlsPaths();
  const certificatePem = files.get(path.posix.basename(paths.certificate));
  const keyPem = files.get(path.posix.basename(paths.key));
  if (certificatePem === undefined || keyPem === undefined) return null;
  return { certificatePem, keyPem, caPem: files.get(path.posix.basename(paths.ca)) ?? "" };
}
