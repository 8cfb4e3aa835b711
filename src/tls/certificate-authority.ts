import { chmod, mkdir, open, readFile, rename, rm } from "node:fs/promises";
import path from "node:path";
import type { RelevoConfig } from "../config/config";
import { fileModeProblem } from "../config/configured-file";
import { ErrorCode, RelevoError } from "../errors";
import { replaceFileDurably, syncDirectory, temporaryNameFor } from "../util/durable-file";
import { completeCaSwap, OWN_CA_DIRECTORY, readCaRotation } from "./own-ca-files";
import { caSigner, createCa, crossCertificate, issueCertificate, type CaSigner, type IssuedCertificate } from "./certificate-issuer";
import { clientCertificateRequest, serverCertificateRequest } from "./certificate-requests";
import { firstCertificate, joinCertificates } from "./pem-bundle";

export type { IssuedCertificate } from "./certificate-issuer";

/** The settings the CA is found by: RELEVO_TLS_CA_FILE and RELEVO_TLS_CA_KEY_FILE, else the data home's own. */
export type CaSettings = Pick<RelevoConfig, "home" | "clusterName" | "tlsCaFile" | "tlsCaKeyFile">;

export { OWN_CA_DIRECTORY } from "./own-ca-files";

/**
 * Where the CA's certificate and key are: the configured files, or
 * `<home>/tls/ca.crt` and `ca.key`. The certificate file is also every
 * client's trust bundle on this host (libpq's `sslrootcert`). Pure.
 */
export function caFiles(settings: Pick<CaSettings, "home" | "tlsCaFile" | "tlsCaKeyFile">): {
  readonly certificateFile: string;
  readonly keyFile: string;
  readonly configured: boolean;
} {
  if (settings.tlsCaFile !== "") return { certificateFile: settings.tlsCaFile, keyFile: settings.tlsCaKeyFile, configured: true };
  const directory = path.join(settings.home, OWN_CA_DIRECTORY);
  return { certificateFile: path.join(directory, "ca.crt"), keyFile: path.join(directory, "ca.key"), configured: false };
}

/**
 * The CA's certificate alone, for a client that only verifies servers (the
 * CLI's `status` and `url`): read, never made. PRECONDITION_FAILED when the
 * data home has no CA yet (`relevo up` makes it).
 */
export async function readTrustedCa(
  settings: Pick<CaSettings, "home" | "tlsCaFile" | "tlsCaKeyFile">,
): Promise<{ file: string; pem: string }> {
  const files = caFiles(settings);
  try {
    return { file: files.certificateFile, pem: await readFile(files.certificateFile, "utf8") };
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code !== "ENOENT") throw cause;
    throw new RelevoError(
      ErrorCode.PreconditionFailed,
      files.configured
        ? `RELEVO_TLS_CA_FILE=${JSON.stringify(files.certificateFile)} does not exist`
        : `no CA in ${settings.home}: run \`relevo up\` first (or set RELEVO_HOME)`,
      { cause, details: { env: files.configured ? "RELEVO_TLS_CA_FILE" : "RELEVO_HOME" } },
    );
  }
}

/**
 * Relevo's CA: issues every server's and client's certificate. The first
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
    private readonly signer: CaSigner,
    private readonly clock: () => Date,
  ) {}

  /**
   * Reads the configured CA, or the data home's, making the latter once
   * (ECDSA P-256, five years) when there is none, and finishing a CA
   * rotation's swap of files a crash interrupted. TLS_CA_INVALID when what
   * is found cannot sign; INVALID_CONFIG when a configured file is missing.
   */
  static async load(settings: CaSettings, options: { readonly clock?: () => Date } = {}): Promise<CertificateAuthority> {
    const clock = options.clock ?? ((): Date => new Date());
    const files = caFiles(settings);
    if (!files.configured) {
      await createOwnCaOnce(settings, clock());
      await completeCaSwap(settings.home);
    }
    const certificatePem = await readCaFile(files.certificateFile, files.configured ? "RELEVO_TLS_CA_FILE" : null);
    const keyPem = await readCaFile(files.keyFile, files.configured ? "RELEVO_TLS_CA_KEY_FILE" : null, { secret: true });
    const signerPem = firstCertificate(certificatePem, files.certificateFile);
    const signer = await caSigner({ certificatePem: signerPem, keyPem, now: clock() }).catch((error: unknown) => {
      if (files.configured || !(error instanceof RelevoError) || !/expired/.test(error.message)) throw error;
      throw new RelevoError(
        ErrorCode.TlsCaInvalid,
        `${error.message}: move ${path.dirname(files.certificateFile)} aside, and the next start makes a new CA and issues every ` +
          "certificate again (clients then need the new ca.crt)",
        { cause: error },
      );
    });
    const chainPem = files.configured ? "" : ((await readCaRotation(settings.home))?.crossCertificatePem ?? "");
    return new CertificateAuthority(files.certificateFile, certificatePem, signerPem, chainPem, files.configured, signer, clock);
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
  crossCertify(successorPem: string): Promise<string | null> {
    return crossCertificate({ issuer: this.signer, successorPem, now: this.clock() });
  }
}

/**
 * Makes `<home>/tls/` with a new CA unless it exists. The two files are
 * written durably into a temporary folder renamed into place, so two
 * processes starting at once never issue under two different CAs: the
 * second rename fails and that process reads the first one's CA.
 */
async function createOwnCaOnce(settings: CaSettings, now: Date): Promise<void> {
  const directory = caFilesDirectory(settings.home);
  // 0711 like the home: the PostgreSQL OS user may read ca.crt by its name (ssl_ca_file is copied, but tools name this one).
  await mkdir(settings.home, { recursive: true, mode: 0o711 });
  if (await exists(directory)) return;
  const temp = temporaryNameFor(directory);
  await mkdir(temp, { mode: 0o711 });
  try {
    await chmod(temp, 0o711); // whatever the umask took off
    const ca = await createCa({ commonName: `Relevo CA ${settings.clusterName}`, now });
    await replaceFileDurably(path.join(temp, "ca.key"), ca.keyPem, { mode: 0o600 });
    await replaceFileDurably(path.join(temp, "ca.crt"), ca.certificatePem, { mode: 0o644 });
    await rename(temp, directory);
  } catch (error) {
    await rm(temp, { recursive: true, force: true });
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOTEMPTY" || code === "EEXIST") return; // another process made it first: its CA is the one
    throw error;
  }
  await syncDirectory(settings.home);
}

export function caFilesDirectory(home: string): string {
  return path.join(home, OWN_CA_DIRECTORY);
}

async function exists(file: string): Promise<boolean> {
  return readFile(path.join(file, "ca.crt")).then(
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
