import Redis from "ioredis";
import tls from "node:tls";
import { ErrorCode, RelevoError } from "../errors";
import type { CertificateHolder, RenewalOutcome } from "../tls/certificate-holder";
import { certificateFacts, recordIssued } from "../tls/issued-certificates";
import { replaceFileDurably } from "../util/durable-file";
import { connectionOptions, type RedisEndpoint } from "./redis-client";
import {
  ensureRedisServerCertificate,
  OwnRedisClientCertificate,
  readIfPresent,
  redisTlsFiles,
  type RedisCertificateIssuer,
} from "./redis-tls";

/** The holder's name of Relevo's own Redis's server certificate in the record of issued certificates. */
export const REDIS_SERVER_HOLDER = "redis:server";
/** This process's client certificate for Redis (in memory; not recorded). */
export const REDIS_CLIENT_HOLDER = "redis:client";

export interface RedisCertificateDeps {
  /** `<home>/redis`: where redis-server reads its certificate, key and CA (redisTlsFiles). */
  readonly redisDirectory: string;
  /** The CA as it is now (a rotation changes it). */
  readonly issuer: () => RedisCertificateIssuer;
  /** Every address Redis is reached at: its certificate's subjectAltNames. */
  readonly addresses: readonly string[];
  /** Relevo's own Redis (not RELEVO_REDIS_URL's): where a new connection checks what it serves. */
  readonly endpoint: RedisEndpoint;
  /** This process's client certificate, renewed after the server's. */
  readonly client: OwnRedisClientCertificate;
  /** A connection to send CONFIG SET on. */
  readonly commands: Redis;
  /** The data home whose record of issued certificates follows what Redis serves. */
  readonly home: string;
}

/**
 * Relevo's own Redis as a certificate holder: new files (server
 * certificate, key, the CA bundle it checks clients against, the client
 * certificate for an operator's redis-cli), then `CONFIG SET` of the TLS
 * files, which makes Redis 7 load them again without a restart (it keeps
 * its previous TLS context and answers an error when they do not load).
 * Then this process's client certificate from the same CA, and a new
 * connection with it, which must be served the new certificate. A refused
 * load puts the previous files back, so no later restart meets them.
 */
export function redisCertificateHolder(deps: RedisCertificateDeps): CertificateHolder {
  return {
    holder: REDIS_SERVER_HOLDER,
    renew: async (): Promise<RenewalOutcome> => {
      const previous = await readServerFiles(deps.redisDirectory);
      const issuer = deps.issuer();
      await ensureRedisServerCertificate({ redisDirectory: deps.redisDirectory, issuer, addresses: deps.addresses, force: true });
      const installed = await readServerFiles(deps.redisDirectory);
      const serial = certificateFacts(installed.certificate!).serial;
      const previousSerial = previous.certificate === null ? null : certificateFacts(previous.certificate).serial;
      try {
        await reloadTls(deps);
      } catch (error) {
        await putBack(deps, previous);
        return {
          phase: "refused",
          holder: REDIS_SERVER_HOLDER,
          reason: `Redis did not load the new certificate ${serial} (${(error as Error).message}); the previous files were put back`,
          serial: previousSerial,
        };
      }
      // Checked with a client certificate of the CA as it is now (this process's may be of the CA it started with),
      // before this process's own is renewed: a refusal leaves this process as it was.
      const probe = await OwnRedisClientCertificate.issue(issuer);
      const served = certificateFacts(await servedRedisCertificate({ ...deps.endpoint, tls: probe })).serial;
      if (served !== serial) {
        await putBack(deps, previous);
        return {
          phase: "refused",
          holder: REDIS_SERVER_HOLDER,
          reason: `Redis serves ${served} after loading ${serial}; the previous files were put back`,
          serial: served,
        };
      }
      await deps.client.renew(issuer);
      await recordIssued(deps.home, REDIS_SERVER_HOLDER, installed.certificate!);
      return { phase: "renewed", holder: REDIS_SERVER_HOLDER, serial, previousSerial };
    },
    extendTrust: async (): Promise<void> => {
      const files = redisTlsFiles(deps.redisDirectory);
      await replaceFileDurably(files.caFile, deps.issuer().certificatePem, { mode: 0o600 });
      await deps.commands.call("CONFIG", "SET", "tls-ca-cert-file", files.caFile);
    },
  };
}

/**
 * This process's own client certificate for Redis as a holder: re-issued
 * in memory by the CA as it is now. What an instance does when another
 * one on its data home changed the CA (the server's files are that one's).
 */
export function redisClientCertificateHolder(deps: Pick<RedisCertificateDeps, "issuer" | "client">): CertificateHolder {
  return {
    holder: REDIS_CLIENT_HOLDER,
    held: () => deps.client.cert,
    renew: async (): Promise<RenewalOutcome> => {
      const previousSerial = certificateFacts(deps.client.cert).serial;
      const serial = certificateFacts(await deps.client.renew(deps.issuer())).serial;
      return { phase: "renewed", holder: REDIS_CLIENT_HOLDER, serial, previousSerial };
    },
  };
}

/** The server's files as they are (null where missing), and the operator's client pair: what a refused load puts back. */
interface ServerFiles {
  readonly certificate: string | null;
  readonly key: string | null;
  readonly clientCertificate: string | null;
  readonly clientKey: string | null;
}

async function readServerFiles(redisDirectory: string): Promise<ServerFiles> {
  const files = redisTlsFiles(redisDirectory);
  return {
    certificate: await readIfPresent(files.certificateFile),
    key: await readIfPresent(files.keyFile),
    clientCertificate: await readIfPresent(files.clientCertificateFile),
    clientKey: await readIfPresent(files.clientKeyFile),
  };
}

/**
 * The previous certificate and key back (keys first, as they were
 * written), the operator's client pair too, and loaded again. The trust
 * (the CA file) stays the current one: during a CA rotation it only grows.
 */
async function putBack(deps: RedisCertificateDeps, previous: ServerFiles): Promise<void> {
  const files = redisTlsFiles(deps.redisDirectory);
  const restore = async (file: string, content: string | null): Promise<void> => {
    if (content !== null) await replaceFileDurably(file, content, { mode: 0o600 });
  };
  await restore(files.keyFile, previous.key);
  await restore(files.certificateFile, previous.certificate);
  await restore(files.clientKeyFile, previous.clientKey);
  await restore(files.clientCertificateFile, previous.clientCertificate);
  await reloadTls(deps).catch(() => undefined); // it kept the previous context anyway
}

/**
 * `CONFIG SET` of the three TLS files in one command: Redis 7 re-reads
 * files named by a TLS setting even when the name is unchanged, and
 * applies all three together or none (an error names what failed).
 */
async function reloadTls(deps: RedisCertificateDeps): Promise<void> {
  const files = redisTlsFiles(deps.redisDirectory);
  await deps.commands.call(
    "CONFIG",
    "SET",
    "tls-cert-file",
    files.certificateFile,
    "tls-key-file",
    files.keyFile,
    "tls-ca-cert-file",
    files.caFile,
  );
}

/**
 * The certificate Redis gives a new connection now (PEM): a connection as
 * Relevo's clients make them (the server proven Relevo's own, verified
 * against the CA and the address, this process's client certificate
 * presented), a PING, and the peer's certificate.
 */
export async function servedRedisCertificate(endpoint: RedisEndpoint): Promise<string> {
  const client = new Redis({
    ...connectionOptions(endpoint),
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 2000,
  });
  client.on("error", () => undefined);
  try {
    await client.connect();
    await client.ping();
    const stream = (client as unknown as { stream?: unknown }).stream;
    const certificate = stream instanceof tls.TLSSocket ? stream.getPeerX509Certificate() : undefined;
    if (certificate === undefined) throw new RelevoError(ErrorCode.CommandFailed, "Redis's connection is not TLS: no certificate to read");
    return certificate.toString();
  } finally {
    client.disconnect();
  }
}
