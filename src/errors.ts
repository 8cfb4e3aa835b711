/**
 * Every error a user can meet carries one of these codes. The codes are part
 * of the operator contract: GraphQL clients read them from `extensions.code`,
 * scripts read the CLI's exit status (see `exitCodeFor`). Never rename one.
 */
export enum ErrorCode {
  InvalidConfig = "INVALID_CONFIG",
  PortInUse = "PORT_IN_USE",
  MissingBinary = "MISSING_BINARY",
  DataDirIncompatible = "DATA_DIR_INCOMPATIBLE",
  DataDirNotOurs = "DATA_DIR_NOT_OURS",
  CommandFailed = "COMMAND_FAILED",
  Timeout = "TIMEOUT",
  NotFound = "NOT_FOUND",
  Unauthenticated = "UNAUTHENTICATED",
  /** The bearer token's expiry (signed into it) has passed: mint a new one. HTTP 401; a WebSocket closes with 4401. */
  TokenExpired = "TOKEN_EXPIRED",
  /** The bearer token was revoked (`relevo token revoke`). HTTP 401; a WebSocket closes with 4401. */
  TokenRevoked = "TOKEN_REVOKED",
  Forbidden = "FORBIDDEN",
  BadUserInput = "BAD_USER_INPUT",
  QueryTooDeep = "QUERY_TOO_DEEP",
  QueryTooComplex = "QUERY_TOO_COMPLEX",
  ServiceUnavailable = "SERVICE_UNAVAILABLE",
  PreconditionFailed = "PRECONDITION_FAILED",
  BackupInProgress = "BACKUP_IN_PROGRESS",
  OperationInProgress = "OPERATION_IN_PROGRESS",
  NoEligibleReplica = "NO_ELIGIBLE_REPLICA",
  PromotionUnsafe = "PROMOTION_UNSAFE",
  NotImplemented = "NOT_IMPLEMENTED",
  DockerUnavailable = "DOCKER_UNAVAILABLE",
  ImageMissing = "IMAGE_MISSING",
  ContainerConflict = "CONTAINER_CONFLICT",
  NodeMissing = "NODE_MISSING",
  /** A new node or restored copy would be made where something already is (a directory, a node's storage): never overwritten. */
  TargetNotEmpty = "TARGET_NOT_EMPTY",
  /** A restored copy's directory is a member's node directory, or inside it, or holds it (resolved through links). */
  TargetIsMember = "TARGET_IS_MEMBER",
  /** `restore stop` given a directory that does not hold a restored copy (e.g. a member's). */
  NotARestoredCopy = "NOT_A_RESTORED_COPY",
  /** A lock (a backup's repository lock in Redis, a lock file on the host) stayed held by another process past the wait allowed. */
  LockHeld = "LOCK_HELD",
  /** A backup's repository lock lapsed while its holder worked under it (Redis lost it, the process stalled): the work is stopped. */
  LockLost = "LOCK_LOST",
  /** A token (or a client address without one) ran more API operations than RELEVO_API_RATE_LIMIT_* allow; retry after the time given. */
  RateLimited = "RATE_LIMITED",
  /** A WebSocket over RELEVO_API_MAX_WEBSOCKETS, its token's or its address's share of them, or a socket's operations over their bound. */
  TooManyConnections = "TOO_MANY_CONNECTIONS",
  /** A mutation sent over the WebSocket: mutations are accepted over HTTP only, where each is audited. */
  MutationOverWebSocket = "MUTATION_OVER_WEBSOCKET",
  /** What answers on a node's port asked for a cleartext or MD5 password (nothing was sent), or let Relevo in without SCRAM's proof (docs/security.md). */
  AuthMethodRefused = "AUTH_METHOD_REFUSED",
  /** What answers on the embedded Redis's port is not Relevo's own Redis: no password was sent (docs/security.md). */
  RedisNotOurs = "REDIS_NOT_OURS",
  /** What answers on the API's port is not Relevo's own service: the CLI sent it no token (docs/security.md). */
  ApiNotOurs = "API_NOT_OURS",
  /** The CA of RELEVO_TLS_CA_FILE / RELEVO_TLS_CA_KEY_FILE (or the data home's) cannot sign: unreadable, not a CA, expired, or the key is not the certificate's. */
  TlsCaInvalid = "TLS_CA_INVALID",
  /** A server did not take its new certificate on reload (a bad file): its previous files were put back, it serves those. */
  TlsReloadRefused = "TLS_RELOAD_REFUSED",
  /** A repository's storage did not answer, or kept failing (timeouts, 5xx, throttling) past its retries. */
  RepositoryUnavailable = "REPOSITORY_UNAVAILABLE",
  /** A repository's storage refused Relevo: credentials, permissions, a bucket that does not exist, a clock too far off. */
  RepositoryAccessDenied = "REPOSITORY_ACCESS_DENIED",
  /** An object of a repository failed its check on read (a checksum, a tag, a length): damaged, truncated or not Relevo's. */
  RepositoryCorrupt = "REPOSITORY_CORRUPT",
  /** A repository's `repository.json` names another cluster than the one the data home recorded (another cluster's repository, or an older descriptor put back). */
  RepositoryClusterMismatch = "REPOSITORY_CLUSTER_MISMATCH",
  Internal = "INTERNAL",
}

export interface RelevoErrorOptions {
  cause?: unknown;
  /** Extra facts safe to show a client (never secrets). */
  details?: Record<string, unknown>;
}

/** A domain error: knows its code, nothing of GraphQL or the CLI. */
export class RelevoError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: RelevoErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "RelevoError";
    this.code = code;
    this.details = options.details ?? {};
  }
}

export function isRelevoError(error: unknown): error is RelevoError {
  return error instanceof RelevoError;
}

/** Exhaustiveness guard for `switch` over discriminated unions. */
export class UnreachableCaseError extends Error {
  constructor(value: never) {
    super(`unreachable case: ${JSON.stringify(value)}`);
  }
}

/** CLI exit statuses, mapped in this one place. */
export function exitCodeFor(error: unknown): number {
  if (!isRelevoError(error)) return 1;
  switch (error.code) {
    case ErrorCode.InvalidConfig:
    case ErrorCode.TlsCaInvalid:
      return 78; // EX_CONFIG
    case ErrorCode.MissingBinary:
    case ErrorCode.DockerUnavailable:
    case ErrorCode.ImageMissing:
      return 69; // EX_UNAVAILABLE
    case ErrorCode.PortInUse:
    case ErrorCode.RedisNotOurs:
    case ErrorCode.ApiNotOurs:
    case ErrorCode.DataDirIncompatible:
    case ErrorCode.DataDirNotOurs:
    case ErrorCode.ContainerConflict:
    case ErrorCode.TargetNotEmpty:
    case ErrorCode.TargetIsMember:
      return 73; // EX_CANTCREAT
    case ErrorCode.NotFound:
    case ErrorCode.BadUserInput:
    case ErrorCode.NotARestoredCopy:
      return 64; // EX_USAGE
    case ErrorCode.ServiceUnavailable:
    case ErrorCode.BackupInProgress:
    case ErrorCode.OperationInProgress:
    case ErrorCode.LockHeld:
    case ErrorCode.LockLost:
    case ErrorCode.RateLimited:
    case ErrorCode.TooManyConnections:
    case ErrorCode.RepositoryUnavailable:
      return 75; // EX_TEMPFAIL
    case ErrorCode.RepositoryAccessDenied:
      return 77; // EX_NOPERM
    case ErrorCode.RepositoryCorrupt:
    case ErrorCode.RepositoryClusterMismatch:
      return 65; // EX_DATAERR
    default:
      return 1;
  }
}
