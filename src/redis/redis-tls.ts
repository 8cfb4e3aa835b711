import { mkdir, readFile } from "node:fs/promises";
import path from "node:path";
import type { ConnectionOptions } from "node:tls";
import type { CertificateAuthority, IssuedCertificate } from "../tls/certificate-authority";
import { renewalReason, type RenewalReason } from "../tls/certificate-renewal";
import { replaceFileDurably } from "../util/durable-file";

/**
 * TLS of the Redis links. Relevo's own Redis serves TLS only (`port 0`,
 * `tls-port`), with a server certificate from Relevo's CA, and asks every
 * client for a certificate of that CA (`tls-auth-clients yes`); every
 * client of Relevo verifies the server (the CA, and the address against the
 * certificate's subjectAltNames, as Node's identity check does).
 */

/** What a Redis client presents and trusts, as PEM in memory. `ca` absent: Node's own root CAs (an external rediss:// server). */
export interface RedisClientTls {
  readonly ca?: string;
  readonly cert?: string;
  readonly key?: string;
}

/** What issues the certificates of Relevo's own Redis: Relevo's CA. */
export type RedisCertificateIssuer = Pick<CertificateAuthority, "certificatePem" | "issueServerCertificate" | "issueClientCertificate">;

/** Relevo's own Redis's TLS: the issuer of its server certificate, and what Relevo's clients present (renewed in place). */
export interface OwnRedisTls {
  readonly issuer: RedisCertificateIssuer;
  readonly client: OwnRedisClientCertificate;
}

/** The common name of the server certificate; Redis 7.0 does not map a client certificate to a user, so clients are "relevo". */
const SERVER_NAME = "redis";
const CLIENT_NAME = "relevo";

/**
 * This process's client certificate for its Redis connections, held in
 * memory only (nothing to protect on disk). A rotation, or another
 * instance's change of the CA, renews it in place: every connection made
 * after (ioredis reconnects included) presents the new one and trusts the
 * CA as it is now; a connection already open stays as it is.
 */
export class OwnRedisClientCertificate implements RedisClientTls {
  private constructor(private current: { readonly ca: string; readonly cert: string; readonly key: string }) {}

  static async issue(issuer: RedisCertificateIssuer): Promise<OwnRedisClientCertificate> {
    return new OwnRedisClientCertificate(await issueClient(issuer));
  }

  get ca(): string {
    return this.current.ca;
  }

  get cert(): string {
    return this.current.cert;
  }

  get key(): string {
    return this.current.key;
  }

  /** A new certificate from `issuer` (the CA as it is now); returns it (PEM) for the caller's report. */
  async renew(issuer: RedisCertificateIssuer): Promise<string> {
    this.current = await issueClient(issuer);
    return this.current.cert;
  }
}

async function issueClient(issuer: RedisCertificateIssuer): Promise<{ ca: string; cert: string; key: string }> {
  const client = await issuer.issueClientCertificate({ user: CLIENT_NAME });
  return { ca: issuer.certificatePem, cert: client.certificatePem, key: client.keyPem };
}

/** This process's Redis TLS: a client certificate issued now by `issuer`. */
export async function ownRedisTls(issuer: RedisCertificateIssuer): Promise<OwnRedisTls> {
  return { issuer, client: await OwnRedisClientCertificate.issue(issuer) };
}

/**
 * ioredis's `tls` option (Node's tls.connect options): verification on,
 * always. What it presents and trusts is read at each connection (the
 * connectors spread these options then), so a renewed client certificate
 * reaches reconnections.
 */
export function clientTlsOptions(tls: RedisClientTls): ConnectionOptions {
  return {
    get ca() {
      return tls.ca;
    },
    get cert() {
      return tls.cert;
    },
    get key() {
      return tls.key;
    },
    rejectUnauthorized: true,
    minVersion: "TLSv1.2",
  };
}

/**
 * The files redis-server reads, in `<home>/redis/tls/` (0700; each file
 * 0600), and a client certificate for an operator's redis-cli (Relevo's
 * own processes issue theirs in memory).
 */
export function redisTlsFiles(redisDirectory: string): {
  certificateFile: string;
  keyFile: string;
  caFile: string;
  clientCertificateFile: string;
  clientKeyFile: string;
} {
  const directory = path.join(redisDirectory, "tls");
  return {
    certificateFile: path.join(directory, "redis.crt"),
    keyFile: path.join(directory, "redis.key"),
    caFile: path.join(directory, "ca.crt"),
    clientCertificateFile: path.join(directory, "client.crt"),
    clientKeyFile: path.join(directory, "client.key"),
  };
}

/**
 * Writes Redis's server certificate (for `addresses`), its key and the CA
 * it checks clients against, unless the kept ones still serve
 * (certificate-renewal.ts): missing, torn, near expiry, of another CA or
 * for other addresses are issued again. Every file durably (temp + fsync +
 * rename + fsync of the directory), mode 0600, the key before the
 * certificate. Returns why it issued one (null: the kept one serves). A
 * rotation calls it with `force`, then has Redis reload (CONFIG SET tls-…).
 */
export async function ensureRedisServerCertificate(options: {
  readonly redisDirectory: string;
  readonly issuer: RedisCertificateIssuer;
  readonly addresses: readonly string[];
  readonly now?: Date;
  readonly force?: boolean;
}): Promise<{ issued: RenewalReason | "forced" | null }> {
  const files = redisTlsFiles(options.redisDirectory);
  await mkdir(path.dirname(files.certificateFile), { recursive: true, mode: 0o700 });
  const keep = { caPem: options.issuer.certificatePem, now: options.now ?? new Date(), force: options.force ?? false };
  const reason = await keepCertificate(
    { certificateFile: files.certificateFile, keyFile: files.keyFile },
    { ...keep, addresses: options.addresses },
    () => options.issuer.issueServerCertificate({ commonName: SERVER_NAME, addresses: options.addresses }),
  );
  await keepCertificate({ certificateFile: files.clientCertificateFile, keyFile: files.clientKeyFile }, { ...keep, addresses: [] }, () =>
    options.issuer.issueClientCertificate({ user: CLIENT_NAME }),
  );
  if ((await readIfPresent(files.caFile)) !== options.issuer.certificatePem) {
    await replaceFileDurably(files.caFile, options.issuer.certificatePem, { mode: 0o600 });
  }
  return { issued: reason };
}

/** One kept pair: issued again (key first, then certificate, each durably, 0600) unless it still serves; why, or null. */
async function keepCertificate(
  files: { readonly certificateFile: string; readonly keyFile: string },
  options: { readonly caPem: string; readonly addresses: readonly string[]; readonly now: Date; readonly force: boolean },
  issue: () => Promise<IssuedCertificate>,
): Promise<RenewalReason | "forced" | null> {
  const kept = { certificatePem: await readIfPresent(files.certificateFile), keyPem: await readIfPresent(files.keyFile) };
  const reason = options.force ? "forced" : renewalReason(kept, options);
  if (reason === null) return null;
  const issued = await issue();
  await replaceFileDurably(files.keyFile, issued.keyPem, { mode: 0o600 });
  await replaceFileDurably(files.certificateFile, issued.certificatePem, { mode: 0o600 });
  return reason;
}

/** A file's text, or null when it does not exist. */
export async function readIfPresent(file: string): Promise<string | null> {
  try {
    return await readFile(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
}
