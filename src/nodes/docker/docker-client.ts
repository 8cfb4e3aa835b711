import Docker from "dockerode";
import { readFileSync } from "node:fs";
import path from "node:path";
import { ErrorCode, RelevoError } from "../../errors";

export interface DockerEndpoint {
  /** unix:///var/run/docker.sock, tcp://host:2376, or a socket path. */
  readonly host: string;
  /** Directory with ca.pem, cert.pem and key.pem for a TLS engine; empty: no TLS. */
  readonly certPath: string;
}

/** A dockerode client for an endpoint (socket, or TCP with TLS as the docker CLI takes it). */
export function connectDocker(endpoint: DockerEndpoint): Docker {
  const host = endpoint.host.trim();
  if (host === "" || host.startsWith("unix://") || host.startsWith("/")) {
    return new Docker({ socketPath: host === "" ? "/var/run/docker.sock" : host.replace(/^unix:\/\//, "") });
  }
  const url = new URL(host.replace(/^tcp:/, endpoint.certPath ? "https:" : "http:"));
  const tls = endpoint.certPath
    ? {
        ca: readFileSync(path.join(endpoint.certPath, "ca.pem")),
        cert: readFileSync(path.join(endpoint.certPath, "cert.pem")),
        key: readFileSync(path.join(endpoint.certPath, "key.pem")),
      }
    : {};
  return new Docker({ protocol: endpoint.certPath ? "https" : "http", host: url.hostname, port: Number(url.port || (endpoint.certPath ? 2376 : 2375)), ...tls });
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
export function translateEngineError(error: unknown, context: { action: string; image?: string; endpoint: string }): RelevoError {
  if (error instanceof RelevoError) return error;
  const e = error as EngineError;
  const message = engineMessage(error);
  if (e.code && ["ECONNREFUSED", "ENOENT", "EACCES", "ECONNRESET", "EHOSTUNREACH", "ETIMEDOUT"].includes(e.code)) {
    return new RelevoError(
      ErrorCode.DockerUnavailable,
      `the Docker engine at ${context.endpoint} does not answer (${e.code}) while trying to ${context.action}: start it ` +
        `(scripts/docker/start-engine.sh on Debian), or set RELEVO_DOCKER_HOST`,
      { cause: error, details: { env: "RELEVO_DOCKER_HOST" } },
    );
  }
  if (e.statusCode === 404 && /no such image|not found.*image|pull access denied/i.test(message)) {
    return imageMissing(context.image ?? "?", error);
  }
  if (e.statusCode === 409 && /already in use|conflict/i.test(message)) {
    return new RelevoError(ErrorCode.ContainerConflict, `cannot ${context.action}: ${message}`, { cause: error });
  }
  return new RelevoError(ErrorCode.CommandFailed, `Docker engine: cannot ${context.action}: ${message}`, { cause: error, details: { statusCode: e.statusCode ?? null } });
}

export function imageMissing(image: string, cause?: unknown): RelevoError {
  return new RelevoError(
    ErrorCode.ImageMissing,
    `image ${image} is not on the Docker engine: pull it (docker pull ${image}), build the test image ` +
      `(scripts/docker/build-test-image.sh), or set RELEVO_DOCKER_IMAGE`,
    { cause, details: { env: "RELEVO_DOCKER_IMAGE", image } },
  );
}
