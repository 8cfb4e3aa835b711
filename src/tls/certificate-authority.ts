import { chmod, link, mkdir, open, readdir, readFile, rename, rm } from "node:fs/promises";
import path from "node:path";
import type { RelevoConfig } from "../config/config";
import { fileModeProblem } from "../config/configured-file";
import { ErrorCode, RelevoError } from "../errors";
import { replaceFileDurably, syncDirectory, temporaryNameFor } from "../util/durable-file";
import { sleep } from "../util/sleep";
import { CA_ROLES, caCommonName, completeCaSwap, OWN_CA_DIRECTORY, ownCaPaths, readCaRotation, type CaRole } from "./own-ca-files";
import {
  caSigner,
  createCa,
  crossCertificate,
  issueCertificate,
  mayCertifySuccessor,
  type CaSigner,
  type IssuedCertificate,
} from "./certificate-issuer";
import { clientCertificateRequest, serverCertificateRequest } from "./certificate-requests";
import { firstCertificate, joinCertificates } from "./pem-bundle";

export type { IssuedCertificate } from "./certificate-issuer";

/** The settings the CAs are found by: RELEVO_TLS_CA_FILE and RELEVO_TLS_CA_KEY_FILE (the nodes' CA only), else the data home's own. */
export type CaSettings = Pick<RelevoConfig, "home" | "clusterName" | "tlsCaFile" | "tlsCaKeyFile">;

export { OWN_CA_DIRECTORY, type CaRole } from "./own-ca-files";

/**
 * Where a CA's certificate and key are. The nodes' CA: the configured
 * files, or `<home>/tls/ca.crt` and `ca.key`. The services CA (the API's
 * and Redis's certificates): always Relevo's own, `<home>/tls/services-ca.crt`
 * and `services-ca.key`, RELEVO_TLS_CA_FILE or not, so that no
 * certificate a node's key goes with is ever one a client of the API or of
 * Redis trusts. The certificate file is also every client's trust bundle
 * on this host (libpq's `sslrootcert` for the nodes'). Pure.
 */
export function caFiles(
  settings: Pick<CaSettings, "home" | "tlsCaFile" | "tlsCaKeyFile">,
  role: CaRole = "nodes",
): {
  readonly certificateFile: string;
  readonly keyFile: string;
  readonly configured: boolean;
} {
  if (role === "nodes" && settings.tlsCaFile !== "") {
    return { certificateFile: settings.tlsCaFile, keyFile: settings.tlsCaKeyFile, configured: true };
  }
  const paths = ownCaPaths(settings.home, role);
  return { certificateFile: paths.certificate, keyFile: paths.key, configured: false };
}

/**
 * A CA's certificate alone, for a client that only verifies servers (the
 * CLI's `status` and `url` the nodes', its API client the services'):
 * read, never made. PRECONDITION_FAILED when the data home has no such CA
 * yet (`relevo up` makes it).
 */
export async function readTrustedCa(
  settings: Pick<CaSettings, "home" | "tlsCaFile" | "tlsCaKeyFile">,
  role: CaRole = "nodes",
): Promise<{ file: string; pem: string }> {
  const files = caFiles(settings, role);
  try {
    return { file: files.certificateFile, pem: await readFile(files.certificateFile, "utf8") };
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code !== "ENOENT") throw cause;
    throw new RelevoError(
      ErrorCode.PreconditionFailed,
      files.configured
        ? `RELEVO_TLS_CA_FILE=${JSON.stringify(files.certificateFile)} does not exist`
        : `no ${role === "services" ? "services CA" : "CA"} in ${settings.home}: run \`relevo up\` first (or set RELEVO_HOME)`,
      { cause, details: { env: files.configured ? "RELEVO_TLS_CA_FILE" : "RELEVO_HOME" } },
    );
  }
}

/**
 * One of Relevo's CAs (see own-ca-files.ts): the nodes' issues the nodes'
 * server and client certificates, the services' the API's and Redis's. The first
 * certificate of its file signs; the whole file (the CA and its chain, or
 * the new and the old CA during a CA rotation) is what clients trust. The
 * key never leaves this object but as signatures. Immutable: a changed CA
 * is another load (see LiveAuthority).
 */
export class CertificateAuthority {
  private constructor(
    /** The CA's file on Relevo's host: `sslrootcert` of libpq clients run here. */
    readonly certificateFile: string,
    /** That file's content, the trust bundle: copied beside every server (its ssl_ca_file) and into containers, `ca` of Node's clients. */
    readonly certificatePem: string,
    /** The certificate that signs: the file's first. */
    readonly signerPem: string,
    /**
     * What a server sends after its own certificate: during a CA rotation,
     * the new CA certified by the old one (see crossCertificate); else "".
     */
    readonly chainPem: string,
    /** RELEVO_TLS_CA_FILE's, not Relevo's own: not Relevo's to rotate. */
    readonly configured: boolean,
    /** The nodes' CA or the services CA. */
    readonly role: CaRole,
    private readonly signer: CaSigner,
    private readonly clock: () => Date,
  ) {}

  /**
   * Reads the CA of `role` (the nodes' by default): the configured one, or
   * the data home's, making the home's CAs once (ECDSA P-256, five years)
   * when there are none, and finishing a CA rotation's swap of files a crash
   * interrupted. TLS_CA_INVALID when what is found cannot sign;
   * INVALID_CONFIG when a configured file is missing.
   */
  static async load(
    settings: CaSettings,
    options: { readonly clock?: () => Date; readonly role?: CaRole } = {},
  ): Promise<CertificateAuthority> {
    const clock = options.clock ?? ((): Date => new Date());
    const role = options.role ?? "nodes";
    const files = caFiles(settings, role);
    if (!files.configured) {
      // The services CA is made beside the nodes' own CA, or alone when the nodes' is RELEVO_TLS_CA_FILE's.
      await createOwnCasOnce(settings, caFiles(settings, "nodes").configured ? ["services"] : CA_ROLES, clock);
      await completeCaSwap(settings.home, role);
    }
    const certificatePem = await readCaFile(files.certificateFile, files.configured ? "RELEVO_TLS_CA_FILE" : null);
    const keyPem = await readCaFile(files.keyFile, files.configured ? "RELEVO_TLS_CA_KEY_FILE" : null, { secret: true });
    const signerPem = firstCertificate(certificatePem, files.certificateFile);
    const signer = await caSigner({ certificatePem: signerPem, keyPem, now: clock() }).catch((error: unknown) => {
      if (files.configured || !(error instanceof RelevoError)) throw error;
      // Relevo's own CA: no variable of the operator's to name; its files, and for an expired one how to make a new one.
      const remedy = /expired/.test(error.message) ? `: ${expiredOwnCaRemedy(settings.home, role)}` : "";
      throw new RelevoError(error.code, `${error.message}${remedy}`, { cause: error, details: { file: files.certificateFile } });
    });
    const chainPem = files.configured ? "" : ((await readCaRotation(settings.home, role))?.crossCertificatePem ?? "");
    return new CertificateAuthority(files.certificateFile, certificatePem, signerPem, chainPem, files.configured, role, signer, clock);
  }

  /** When the signing CA's certificate expires. */
  get notAfter(): Date {
    return this.signer.certificate.notAfter;
  }

  /**
   * A server certificate for every address the server is reached at (IP
   * addresses as iPAddress, host names as dNSName); its file holds the
   * chain after it (chainPem) while a CA rotation runs.
   */
  async issueServerCertificate(options: {
    readonly commonName: string;
    readonly addresses: readonly string[];
  }): Promise<IssuedCertificate> {
    const issued = await issueCertificate(this.signer, serverCertificateRequest({ ...options, now: this.clock() }));
    return {
      ...issued,
      certificatePem: this.chainPem === "" ? issued.certificatePem : joinCertificates([issued.certificatePem, this.chainPem]),
    };
  }

  /** A client certificate whose CN is `user` (PostgreSQL's `cert` authentication, Redis's tls-auth-clients). */
  issueClientCertificate(options: { readonly user: string }): Promise<IssuedCertificate> {
    return issueCertificate(this.signer, clientCertificateRequest({ ...options, now: this.clock() }));
  }

  /** `successorPem` (a new CA) certified by this CA, or null when this CA may not vouch for another (see crossCertificate). */
  /** Whether it may certify a successor (a CA of pathLength 0, made before rotation existed, may not: no cross certificate). */
  get certifiesSuccessor(): boolean {
    return mayCertifySuccessor(this.signer);
  }

  crossCertify(successorPem: string): Promise<string | null> {
    return crossCertificate({ issuer: this.signer, successorPem, now: this.clock() });
  }
}

/**
 * Makes the data home's CAs of `roles` unless they exist. A home without
 * `tls/` gets them all at once: the files are written durably into a
 * temporary folder renamed into place, so two processes starting at once
 * never issue under two different CAs (the second rename fails and that
 * process reads the first one's CAs). A home whose `tls/` lacks one (made
 * before the services CA existed, or while the nodes' CA was
 * RELEVO_TLS_CA_FILE's) gets it added (addOwnCaOnce).
 */
async function createOwnCasOnce(settings: CaSettings, roles: readonly CaRole[], clock: () => Date): Promise<void> {
  const directory = caFilesDirectory(settings.home);
  // 0711 like the home: the PostgreSQL OS user may read ca.crt by its name (ssl_ca_file is copied, but tools name this one).
  await mkdir(settings.home, { recursive: true, mode: 0o711 });
  if (await exists(directory)) {
    for (const role of roles) await addOwnCaOnce(settings, role, clock);
    return;
  }
  const temp = temporaryNameFor(directory);
  await mkdir(temp, { mode: 0o711 });
  try {
    await chmod(temp, 0o711); // whatever the umask took off
    for (const role of roles) {
      const ca = await createCa({ commonName: caCommonName(role, settings.clusterName), now: clock() });
      const paths = ownCaPaths(temp, role);
      await replaceFileDurably(path.join(temp, path.basename(paths.key)), ca.keyPem, { mode: 0o600 });
      await replaceFileDurably(path.join(temp, path.basename(paths.certificate)), ca.certificatePem, { mode: 0o644 });
    }
    await rename(temp, directory);
  } catch (error) {
    await rm(temp, { recursive: true, force: true });
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOTEMPTY" || code === "EEXIST") return createOwnCasOnce(settings, roles, clock); // another process made it first
    throw error;
  }
  await syncDirectory(settings.home);
}

/** How long a load waits for the certificate of a CA whose key another process has just put in place. */
const CA_CREATION_WAIT_MS = 10_000;

/**
 * Adds the CA of `role` to an existing `tls/` unless it has one. The key
 * is the commit point: it is link(2)ed into place, which fails when the
 * name is taken, so of two processes at once one makes the CA and writes
 * its certificate after its key, and the other waits for that certificate.
 * A key left alone by a crash between the two is reported, never paired
 * with another CA's certificate.
 */
async function addOwnCaOnce(settings: CaSettings, role: CaRole, clock: () => Date): Promise<void> {
  const paths = ownCaPaths(settings.home, role);
  if (await fileExists(paths.certificate)) return;
  if (!(await fileExists(paths.key))) {
    const ca = await createCa({ commonName: caCommonName(role, settings.clusterName), now: clock() });
    if (await createFileDurably(paths.key, ca.keyPem, { mode: 0o600 })) {
      await replaceFileDurably(paths.certificate, ca.certificatePem, { mode: 0o644 });
      return;
    }
  }
  const deadline = clock().getTime() + CA_CREATION_WAIT_MS;
  while (clock().getTime() < deadline) {
    if (await fileExists(paths.certificate)) return;
    await sleep(50);
  }
  throw new RelevoError(
    ErrorCode.TlsCaInvalid,
    `${paths.key} has no certificate beside it (${path.basename(paths.certificate)}): a start was interrupted while it made ` +
      `this CA; remove ${paths.key} and start again (a new CA is made)`,
  );
}

/**
 * Writes `file` with `content` only if no file has that name: a temporary
 * written and flushed, then link(2)ed to the name. False when the name was
 * taken (the temporary is removed either way).
 */
async function createFileDurably(file: string, content: string, options: { readonly mode: number }): Promise<boolean> {
  const temp = temporaryNameFor(file);
  await replaceFileDurably(temp, content, options);
  try {
    await link(temp, file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw error;
  } finally {
    await rm(temp, { force: true });
  }
  await syncDirectory(path.dirname(file));
  return true;
}

export function caFilesDirectory(home: string): string {
  return path.join(home, OWN_CA_DIRECTORY);
}

/** Whether `directory` exists: it is only ever made whole, by a rename (a role missing in it is added). */
async function exists(directory: string): Promise<boolean> {
  return (
    (await readdir(directory).catch((error: NodeJS.ErrnoException) => (error.code === "ENOENT" ? null : Promise.reject(error)))) !== null
  );
}

async function fileExists(file: string): Promise<boolean> {
  return readFile(file).then(
    () => true,
    (error: NodeJS.ErrnoException) => (error.code === "ENOENT" ? false : Promise.reject(error)),
  );
}

/**
 * A CA file's text. `secret` (the key): refused when its group or others
 * may read it, as ssh refuses a private key (review 14): whoever can read
 * the CA's key can issue a certificate Relevo trusts for any address.
 */
async function readCaFile(file: string, env: string | null, options: { readonly secret?: boolean } = {}): Promise<string> {
  try {
    const handle = await open(file, "r");
    try {
      const problem = fileModeProblem(await handle.stat(), { secret: options.secret ?? false, ownUid: process.getuid?.() ?? 0 });
      if (problem !== null) {
        throw new RelevoError(
          ErrorCode.TlsCaInvalid,
          `the CA's ${options.secret ? "key" : "certificate"} ${file} is refused: ${problem}${env ? ` (${env})` : ""}`,
          {
            details: env ? { env } : {},
          },
        );
      }
      return await handle.readFile("utf8");
    } finally {
      await handle.close();
    }
  } catch (cause) {
    if (cause instanceof RelevoError) throw cause;
    const reason = (cause as NodeJS.ErrnoException).code ?? "unreadable";
    if (env !== null) {
      throw new RelevoError(ErrorCode.InvalidConfig, `invalid configuration: ${env}=${JSON.stringify(file)} cannot be read (${reason})`, {
        cause,
        details: { env },
      });
    }
    throw new RelevoError(
      ErrorCode.TlsCaInvalid,
      `the data home's CA file ${file} cannot be read (${reason}): restore it from a copy, or remove ${path.dirname(file)} to make a new CA (every certificate is then re-issued at the next start)`,
      { cause },
    );
  }
}

/**
 * How to replace Relevo's own CA that expired: its files removed (not the
 * other CA's, which may be valid still), and who then needs the new
 * certificate. Pure.
 */
export function expiredOwnCaRemedy(home: string, role: CaRole): string {
  const paths = ownCaPaths(home, role);
  const files = [paths.certificate, paths.key, paths.rotation].map((file) => path.basename(file));
  const [made, clients] =
    role === "nodes"
      ? ["a new nodes' CA and issues every node's certificate again", "PostgreSQL clients then need the new ca.crt"]
      : [
          "a new services CA and issues the API's and Redis's certificates again",
          "clients of the API and of Redis then need the new services-ca.crt",
        ];
  return `remove ${files.join(", ")} from ${paths.directory} (the last if present), and the next start makes ${made} (${clients})`;
}
