import Docker from "dockerode";
import { readFileSync } from "node:fs";
import path from "node:path";
import { createSecureContext } from "node:tls";
import { isLoopback } from "../../config/api-transport";
import { ErrorCode, RelevoError } from "../../errors";

export interface DockerEndpoint {
  /** unix:///var/run/docker.sock, tcp://host:2376, or a socket path. */
  readonly host: string;
  /** Directory with ca.pem, cert.pem and key.pem for a TLS engine; empty: no TLS. */
  readonly certPath: string;
}

/**
 * A dockerode client for an endpoint (socket, or TCP with TLS as the docker
 * CLI takes it). Plain TCP only to a loopback address: INVALID_CONFIG
 * otherwise.
 */
export function connectDocker(endpoint: DockerEndpoint): Docker {
  const host = endpoint.host.trim();
  if (host === "" || host.startsWith("unix://") || host.startsWith("/")) {
    return new Docker({ socketPath: host === "" ? "/var/run/docker.sock" : host.replace(/^unix:\/\//, "") });
  }
  const url = new URL(host.replace(/^tcp:/, endpoint.certPath ? "https:" : "http:"));
  // An engine's API is root on its host: in clear off loopback, anyone on the path could drive it.
  if (!endpoint.certPath && !isLoopback(url.hostname.replace(/^\[|\]$/g, ""))) {
    throw new RelevoError(
      ErrorCode.InvalidConfig,
      `RELEVO_DOCKER_HOST=${host} is plain TCP to an address other machines can reach: the engine's API would travel in clear ` +
        `and unauthenticated; give its TLS client certificates in RELEVO_DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem), or use a socket`,
      { details: { env: "RELEVO_DOCKER_HOST" } },
    );
  }
  const tls = endpoint.certPath ? clientCertificates(endpoint.certPath) : {};
  return new Docker({
    protocol: endpoint.certPath ? "https" : "http",
    host: url.hostname,
    port: Number(url.port || (endpoint.certPath ? 2376 : 2375)),
    ...tls,
  });
}

/** ca.pem, cert.pem and key.pem of a directory, checked to make a TLS context (a malformed file or a key of another certificate is a configuration error, not a failed request later). */
function clientCertificates(directory: string): { ca: Buffer; cert: Buffer; key: Buffer } {
  const files = {
    ca: certificateFile(directory, "ca.pem"),
    cert: certificateFile(directory, "cert.pem"),
    key: certificateFile(directory, "key.pem"),
  };
  try {
    createSecureContext(files);
  } catch (error) {
    throw new RelevoError(
      ErrorCode.InvalidConfig,
      `RELEVO_DOCKER_CERT_PATH (${directory}): ca.pem, cert.pem and key.pem do not make a TLS client (${(error as Error).message})`,
      { cause: error, details: { env: "RELEVO_DOCKER_CERT_PATH" } },
    );
  }
  return files;
}

function certificateFile(directory: string, name: string): Buffer {
  try {
    return readFileSync(path.join(directory, name));
  } catch (error) {
    throw new RelevoError(
      ErrorCode.InvalidConfig,
      `RELEVO_DOCKER_CERT_PATH (${directory}) must hold the engine's CA and this client's certificate and key: ${name} is unreadable (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`,
      { cause: error, details: { env: "RELEVO_DOCKER_CERT_PATH", file: name } },
    );
  }
}

/**
 * Node's TLS failures: the engine's certificate not trusted or not for this
 * host, or this client's certificate refused by the engine.
 */
function isTlsFailure(code: string | undefined): boolean {
  return code !== undefined && /^(ERR_SSL_|ERR_TLS_|CERT_|UNABLE_TO_|DEPTH_ZERO_|SELF_SIGNED_|EPROTO$)/.test(code);
}

interface EngineError {
  readonly statusCode?: number;
  readonly code?: string;
  readonly json?: { message?: string } | null;
  readonly reason?: string;
  readonly message?: string;
}

export function engineMessage(error: unknown): string {
  const e = error as EngineError;
  return (e.json?.message ?? e.message ?? String(error)).trim();
}

export function isStatus(error: unknown, status: number): boolean {
  return (error as EngineError).statusCode === status;
}

/** The engine's errors as Relevo's: unreachable, image missing, name clash; anything else is a failed command. */
/** Where the engine is: its address, and whether it is reached over TLS with client certificates. */
export interface EngineContext {
  readonly endpoint: string;
  readonly tls: boolean;
}

export function translateEngineError(error: unknown, context: EngineContext & { action: string; image?: string }): RelevoError {
  if (error instanceof RelevoError) return error;
  const e = error as EngineError;
  const message = engineMessage(error);
  if (e.code && ["ECONNREFUSED", "ENOENT", "EACCES", "ECONNRESET", "EHOSTUNREACH", "ETIMEDOUT"].includes(e.code)) {
    return new RelevoError(
      ErrorCode.DockerUnavailable,
      `the Docker engine at ${context.endpoint} does not answer (${e.code}) while trying to ${context.action}: start it ` +
        `(on Debian, as root, scripts/setup.sh test starts one), or set RELEVO_DOCKER_HOST` +
        // A TLS engine that refuses this client's certificate resets the connection after the handshake.
        (context.tls && e.code === "ECONNRESET"
          ? `; over TLS, also check that the engine trusts the client certificate in RELEVO_DOCKER_CERT_PATH`
          : ""),
      { cause: error, details: { env: "RELEVO_DOCKER_HOST" } },
    );
  }
  if (e.statusCode === undefined && isTlsFailure(e.code)) {
    return new RelevoError(
      ErrorCode.DockerUnavailable,
      `the TLS handshake with the Docker engine at ${context.endpoint} failed (${e.code ?? message}) while trying to ${context.action}: ` +
        `RELEVO_DOCKER_CERT_PATH must hold the engine's CA (ca.pem) and a client certificate it trusts (cert.pem, key.pem)`,
      { cause: error, details: { env: "RELEVO_DOCKER_CERT_PATH" } },
    );
  }
  if (e.statusCode === 404 && /no such image|not found.*image|pull access denied/i.test(message)) {
    return imageMissing(context.image ?? "?", error);
  }
  if (e.statusCode === 409 && /already in use|conflict/i.test(message)) {
    return new RelevoError(ErrorCode.ContainerConflict, `cannot ${context.action}: ${message}`, { cause: error });
  }
  return new RelevoError(ErrorCode.CommandFailed, `Docker engine: cannot ${context.action}: ${message}`, {
    cause: error,
    details: { statusCode: e.statusCode ?? null },
  });
}

export function imageMissing(image: string, cause?: unknown): RelevoError {
  return new RelevoError(
    ErrorCode.ImageMissing,
    `image ${image} is not on the Docker engine: pull it (docker pull ${image}), build the test image ` +
      `(scripts/setup.sh test builds it), or set RELEVO_DOCKER_IMAGE`,
    { cause, details: { env: "RELEVO_DOCKER_IMAGE", image } },
  );
}
