import path from "node:path";
import { z } from "zod";
import { ErrorCode, RelevoError } from "../errors";
import { isLoopback } from "./api-transport";
import { configKeys, durationSchema, type ConfigKey } from "./config-keys";
import { formatDuration } from "./duration";
import { loadRepositories, type RepositorySettings } from "./repository-config";

export type RelevoConfig = {
  readonly [K in ConfigKey]: z.infer<(typeof configKeys)[K]["schema"]>;
} & {
  /** The backup repositories by number (RELEVO_REPO<n>_…; see repository-config.ts); repository 1 always. */
  readonly repositories: readonly RepositorySettings[];
};

export type ConfigOverrides = Partial<{ [K in ConfigKey]: string | number | boolean }>;

/**
 * Builds the configuration once, at start-up: overrides (from code, tests or
 * CLI flags) win over the environment, which wins over the defaults. The
 * only module that reads `process.env` passes it in here.
 */
export function loadConfig(env: NodeJS.ProcessEnv, overrides: ConfigOverrides = {}): RelevoConfig {
  const values: Record<string, unknown> = {};
  for (const key of Object.keys(configKeys) as ConfigKey[]) {
    const descriptor = configKeys[key];
    const override = overrides[key];
    const raw =
      override !== undefined ? overrideText(override, descriptor.schema === durationSchema) : (env[descriptor.env] ?? descriptor.default);
    const parsed = descriptor.schema.safeParse(raw.trim());
    if (!parsed.success) {
      const reason = parsed.error.issues.map((issue) => issue.message).join("; ");
      const shown = "secret" in descriptor ? "<not shown>" : JSON.stringify(raw);
      throw new RelevoError(ErrorCode.InvalidConfig, `invalid configuration: ${descriptor.env}=${shown} (${key}): ${reason}`, {
        details: { key, env: descriptor.env },
      });
    }
    values[key] = parsed.data;
  }
  const config = values as { -readonly [K in keyof RelevoConfig]: RelevoConfig[K] };
  config.home = path.resolve(config.home);
  config.repositories = loadRepositories(env, { home: config.home, repository: config.repository });
  // Repository 1's directory (RELEVO_REPO1_PATH, RELEVO_REPOSITORY or the default): where today's repository lives.
  // (An S3 repository 1 keeps the default path here, which nothing reads: the repository is opened from its settings.)
  const first = config.repositories[0]!;
  config.repository = first.type === "dir" ? first.path : path.join(config.home, "repository");
  if (config.backupRepo !== "all" && !config.repositories.some((settings) => settings.index === config.backupRepo)) {
    throw new RelevoError(
      ErrorCode.InvalidConfig,
      `invalid configuration: ${configKeys.backupRepo.env}=${config.backupRepo}: not a configured repository ` +
        `(${config.repositories.map((settings) => settings.index).join(", ")}); set all or one of them`,
      { details: { key: "backupRepo", env: configKeys.backupRepo.env } },
    );
  }
  // The docker CLI's own variables, when Relevo's are not set.
  config.dockerHost = config.dockerHost || env.DOCKER_HOST || "";
  config.dockerCertPath =
    config.dockerCertPath ||
    (env.DOCKER_TLS_VERIFY && env.DOCKER_TLS_VERIFY !== "0" ? (env.DOCKER_CERT_PATH ?? path.join(env.HOME ?? "/root", ".docker")) : "");
  validateTlsCa(config);
  validateExternalRedisTls(config);
  validateApiTls(config);
  validatePorts(config);
  return Object.freeze(config);
}

/** A CA of one's own is a certificate and its key: both or neither; paths resolved once, here. */
function validateTlsCa(config: { -readonly [K in ConfigKey]: RelevoConfig[K] }): void {
  const given = [config.tlsCaFile, config.tlsCaKeyFile].filter((file) => file !== "").length;
  if (given === 1) {
    const missing = config.tlsCaFile === "" ? configKeys.tlsCaFile.env : configKeys.tlsCaKeyFile.env;
    throw new RelevoError(
      ErrorCode.InvalidConfig,
      `invalid configuration: set both ${configKeys.tlsCaFile.env} and ${configKeys.tlsCaKeyFile.env} (a CA's certificate and its key), or neither; ${missing} is empty`,
      { details: { env: missing } },
    );
  }
  if (given === 2) {
    config.tlsCaFile = path.resolve(config.tlsCaFile);
    config.tlsCaKeyFile = path.resolve(config.tlsCaKeyFile);
  }
}

/**
 * RELEVO_REDIS_CA_FILE, _CERT_FILE and _KEY_FILE are the TLS of a rediss://
 * RELEVO_REDIS_URL: given for anything else they would be silently unused;
 * a certificate goes with its key. Paths resolved once, here.
 */
function validateExternalRedisTls(config: { -readonly [K in ConfigKey]: RelevoConfig[K] }): void {
  const { redisTls, redisUrl } = configKeys;
  if (config.redisTls === "off" && !config.redisUrl.startsWith("redis://")) {
    throw new RelevoError(
      ErrorCode.InvalidConfig,
      `invalid configuration: ${redisTls.env}=off is for a redis:// ${redisUrl.env}, and ${redisUrl.env} is ${config.redisUrl === "" ? "empty (Relevo's own Redis is TLS only)" : "a rediss:// URL"}: unset ${redisTls.env}`,
      { details: { env: redisTls.env } },
    );
  }
  if (config.redisUrl.startsWith("redis://") && config.redisTls !== "off") {
    const host = new URL(config.redisUrl).hostname;
    if (!isLoopback(host)) {
      throw new RelevoError(
        ErrorCode.InvalidConfig,
        `invalid configuration: ${redisUrl.env} is a redis:// URL (plain TCP) to ${host}, which is not a loopback address: ` +
          `Redis's password and Relevo's state would travel in clear. Give a rediss:// URL (with RELEVO_REDIS_CA_FILE), ` +
          `or set ${redisTls.env}=off to accept plaintext`,
        { details: { env: redisUrl.env } },
      );
    }
  }
  const files = (["redisCaFile", "redisCertFile", "redisKeyFile"] as const).filter((key) => config[key] !== "");
  if (files.length === 0) return;
  if (!config.redisUrl.startsWith("rediss://")) {
    const env = configKeys[files[0]!].env;
    throw new RelevoError(
      ErrorCode.InvalidConfig,
      `invalid configuration: ${env} is for a Redis reached over TLS, and ${configKeys.redisUrl.env} is ${config.redisUrl === "" ? "empty (Relevo's own Redis uses Relevo's CA)" : "not a rediss:// URL"}: unset ${env}, or give a rediss:// URL`,
      { details: { env } },
    );
  }
  if ((config.redisCertFile === "") !== (config.redisKeyFile === "")) {
    const missing = config.redisCertFile === "" ? configKeys.redisCertFile.env : configKeys.redisKeyFile.env;
    throw new RelevoError(
      ErrorCode.InvalidConfig,
      `invalid configuration: set both ${configKeys.redisCertFile.env} and ${configKeys.redisKeyFile.env} (a client certificate and its key), or neither; ${missing} is empty`,
      { details: { env: missing } },
    );
  }
  for (const key of files) config[key] = path.resolve(config[key]);
}

/** The API's own certificate is a certificate and its key, and contradicts RELEVO_API_TLS=off. Paths resolved once, here. */
function validateApiTls(config: { -readonly [K in ConfigKey]: RelevoConfig[K] }): void {
  const { apiTls, apiTlsCertFile, apiTlsKeyFile } = configKeys;
  if ((config.apiTlsCertFile === "") !== (config.apiTlsKeyFile === "")) {
    const missing = config.apiTlsCertFile === "" ? apiTlsCertFile.env : apiTlsKeyFile.env;
    throw new RelevoError(
      ErrorCode.InvalidConfig,
      `invalid configuration: set both ${apiTlsCertFile.env} and ${apiTlsKeyFile.env} (the API's certificate and its key), or neither; ${missing} is empty`,
      { details: { env: missing } },
    );
  }
  if (config.apiTlsCertFile === "") return;
  if (config.apiTls === "off") {
    throw new RelevoError(
      ErrorCode.InvalidConfig,
      `invalid configuration: ${apiTls.env}=off, but ${apiTlsCertFile.env} is set: unset one of them`,
      { details: { env: apiTls.env } },
    );
  }
  config.apiTlsCertFile = path.resolve(config.apiTlsCertFile);
  config.apiTlsKeyFile = path.resolve(config.apiTlsKeyFile);
}

/** Nodes, Redis and the API must not be configured onto the same port. */
function validatePorts(config: RelevoConfig): void {
  const claimed = new Map<number, string>();
  const claim = (port: number, owner: string, env: string): void => {
    const other = claimed.get(port);
    if (other !== undefined) {
      throw new RelevoError(
        ErrorCode.InvalidConfig,
        `invalid configuration: port ${port} is given to both ${other} and ${owner}; change ${env}`,
        { details: { env } },
      );
    }
    claimed.set(port, owner);
  };
  claim(config.apiPort, "the API", configKeys.apiPort.env);
  claim(config.redisPort, "Redis", configKeys.redisPort.env);
  claim(config.primaryPort, "the primary", configKeys.primaryPort.env);
  for (let i = 0; i < config.replicaCount; i += 1) {
    claim(config.replicaPort + i, `replica ${i + 1}`, configKeys.replicaPort.env);
  }
}

/** The defaults table as rows, for documentation and `relevo config`. */
export function describeConfig(): Array<{ key: ConfigKey; env: string; default: string; doc: string }> {
  return (Object.keys(configKeys) as ConfigKey[]).map((key) => ({
    key,
    env: configKeys[key].env,
    default: configKeys[key].default,
    doc: configKeys[key].doc,
  }));
}

/**
 * An override as the text its key parses. A period given as a number is
 * milliseconds, as a loaded configuration holds it (a test or a tool that
 * passes a loaded configuration back in as overrides).
 */
function overrideText(override: string | number | boolean, isDuration: boolean): string {
  return isDuration && typeof override === "number" ? formatDuration(override) : String(override);
}
