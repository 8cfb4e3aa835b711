import path from "node:path";
import { ErrorCode, RelevoError } from "../errors";
import { isIP } from "node:net";
import { isLoopback } from "./api-transport";

/**
 * The backup repositories, numbered in the manner of pgBackRest
 * (`RELEVO_REPO<n>_…`, n from 1 to 256; these names are the operator's
 * contract). Repository 1 is a directory unless configured otherwise: by
 * default `<RELEVO_HOME>/repository`, or RELEVO_REPOSITORY as before. A
 * repository exists when any of its variables is set (repository 1
 * always). Pure: the environment is passed in.
 */
export type RepositorySettings = DirectoryRepositorySettings | S3RepositorySettings;

interface CommonRepositorySettings {
  readonly index: number;
  /** Encryption on when non-empty (never logged, printed or stored: see describeRepository). */
  readonly cipherPass: string;
  /** Full backups kept; null: the cluster-wide RELEVO_RETENTION_FULL. */
  readonly retentionFull: number | null;
  /** Whatever restores to any point of the last N days is kept; null: no time rule. */
  readonly retentionDays: number | null;
}

export interface DirectoryRepositorySettings extends CommonRepositorySettings {
  readonly type: "dir";
  readonly path: string;
}

export interface S3RepositorySettings extends CommonRepositorySettings {
  readonly type: "s3";
  readonly bucket: string;
  /** "" for AWS's own endpoint of the region. */
  readonly endpoint: string;
  readonly region: string;
  readonly uriStyle: "path" | "host";
  /** "" or segments ending in "/". */
  readonly prefix: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly caFile: string;
  readonly requestChecksums: boolean;
}

const MAX_REPOSITORIES = 256;
const MIN_CIPHER_PASS = 12;

/** Each variable of a repository: its suffix after `RELEVO_REPO<n>_`, and the types it applies to. */
const VARIABLES = {
  TYPE: ["dir", "s3"],
  PATH: ["dir"],
  S3_BUCKET: ["s3"],
  S3_ENDPOINT: ["s3"],
  S3_REGION: ["s3"],
  S3_URI_STYLE: ["s3"],
  S3_PREFIX: ["s3"],
  S3_ACCESS_KEY_ID: ["s3"],
  S3_SECRET_ACCESS_KEY: ["s3"],
  S3_CA_FILE: ["s3"],
  S3_CHECKSUM: ["s3"],
  CIPHER_PASS: ["dir", "s3"],
  RETENTION_FULL: ["dir", "s3"],
  RETENTION_DAYS: ["dir", "s3"],
} as const;
type Variable = keyof typeof VARIABLES;

/** The variables whose values are never shown, not even in an error about them. */
const SECRET_VARIABLES: ReadonlySet<Variable> = new Set(["S3_SECRET_ACCESS_KEY", "CIPHER_PASS"]);

/** A repository as a message or the API may show it: its number, type and place, never a credential or pass. Pure. */
export function describeRepository(settings: RepositorySettings): string {
  const place =
    settings.type === "dir"
      ? settings.path
      : `s3://${settings.bucket}/${settings.prefix}${settings.endpoint === "" ? "" : ` at ${settings.endpoint}`}`;
  return `repo${settings.index} (${settings.type}: ${place}${settings.cipherPass === "" ? "" : ", encrypted"})`;
}

/**
 * Every repository the environment configures, by number. INVALID_CONFIG,
 * naming the variable, for an unknown variable of a repository (a typo must
 * not leave a repository half configured), a value out of its range, or
 * variables that contradict each other.
 */
export function loadRepositories(
  env: NodeJS.ProcessEnv,
  defaults: { readonly home: string; readonly repository: string },
): RepositorySettings[] {
  const byIndex = new Map<number, Map<Variable, string>>();
  for (const [name, raw] of Object.entries(env)) {
    if (raw === undefined) continue;
    // RELEVO_REPO_1_PATH, RELEVO_REPO1PATH, RELEVO_REPOS…: a typo that would leave a repository half configured.
    if (name.startsWith("RELEVO_REPO") && name !== "RELEVO_REPOSITORY" && !/^RELEVO_REPO\d+_/.test(name)) {
      throw invalid(name, "not a repository variable: RELEVO_REPO<n>_<NAME>, n from 1 (e.g. RELEVO_REPO1_PATH)");
    }
    const match = /^RELEVO_REPO(\d+)_(.+)$/.exec(name);
    if (!match) continue;
    const index = Number(match[1]);
    if (!(Number.isInteger(index) && index >= 1 && index <= MAX_REPOSITORIES) || match[1]!.startsWith("0")) {
      throw invalid(name, `repositories are numbered 1 to ${MAX_REPOSITORIES}`);
    }
    const variable = match[2] as Variable;
    if (!(variable in VARIABLES)) {
      throw invalid(name, `not a repository variable; known: ${Object.keys(VARIABLES).join(", ")}`);
    }
    if (!byIndex.has(index)) byIndex.set(index, new Map());
    // Secrets as given (a pass may end in a space); the rest trimmed.
    byIndex.get(index)!.set(variable, SECRET_VARIABLES.has(variable) ? raw : raw.trim());
  }
  if (!byIndex.has(1)) byIndex.set(1, new Map());
  return [...byIndex.keys()].sort((a, b) => a - b).map((index) => repository(index, byIndex.get(index)!, defaults));
}

function repository(
  index: number,
  values: ReadonlyMap<Variable, string>,
  defaults: { readonly home: string; readonly repository: string },
): RepositorySettings {
  const name = (variable: Variable): string => `RELEVO_REPO${index}_${variable}`;
  const value = (variable: Variable): string => values.get(variable) ?? "";
  const type = value("TYPE") || "dir";
  if (type !== "dir" && type !== "s3") throw invalid(name("TYPE"), "dir or s3");
  for (const variable of values.keys()) {
    if (!(VARIABLES[variable] as readonly string[]).includes(type)) {
      throw invalid(name(variable), `not a variable of a ${type} repository`, { secret: SECRET_VARIABLES.has(variable) });
    }
  }
  const cipherPass = values.get("CIPHER_PASS") ?? "";
  if (values.has("CIPHER_PASS") && cipherPass.length < MIN_CIPHER_PASS) {
    throw invalid(name("CIPHER_PASS"), `at least ${MIN_CIPHER_PASS} characters (it is the only secret that opens the backups)`, {
      secret: true,
    });
  }
  const common = {
    index,
    cipherPass,
    retentionFull: count(value("RETENTION_FULL"), name("RETENTION_FULL"), 1000),
    retentionDays: count(value("RETENTION_DAYS"), name("RETENTION_DAYS"), 36_600),
  };
  if (type === "dir") return { ...common, type, path: directoryPath(index, value("PATH"), defaults) };

  const bucket = value("S3_BUCKET");
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw invalid(name("S3_BUCKET"), "a bucket name: 3 to 63 lower-case letters, digits, dots and hyphens");
  }
  const endpoint = value("S3_ENDPOINT").replace(/\/+$/, "");
  if (endpoint !== "") checkEndpoint(endpoint, name("S3_ENDPOINT"));
  const uriStyle = value("S3_URI_STYLE") || "host";
  if (uriStyle !== "host" && uriStyle !== "path") throw invalid(name("S3_URI_STYLE"), "host or path");
  if (uriStyle === "host" && endpoint !== "") {
    const host = new URL(endpoint).hostname.replace(/^\[|\]$/g, "");
    // Host style puts the bucket's name in front of the endpoint's: an address or localhost would become a DNS name.
    if (isIP(host) !== 0 || isLoopback(host)) {
      throw invalid(
        name("S3_URI_STYLE"),
        `path, with an endpoint that is an address or localhost (${host}): host style would ask DNS for ${bucket}.${host}`,
      );
    }
  }
  const [accessKeyId, secretAccessKey] = [value("S3_ACCESS_KEY_ID"), value("S3_SECRET_ACCESS_KEY")];
  if ((accessKeyId === "") !== (secretAccessKey === "")) {
    const missing = accessKeyId === "" ? "S3_ACCESS_KEY_ID" : "S3_SECRET_ACCESS_KEY";
    throw invalid(name(missing), "set both the access key id and its secret, or neither (the AWS SDK's default credential chain)");
  }
  const checksum = value("S3_CHECKSUM") || "off";
  if (checksum !== "on" && checksum !== "off") throw invalid(name("S3_CHECKSUM"), "on or off");
  return {
    ...common,
    type,
    bucket,
    endpoint,
    region: value("S3_REGION") || "us-east-1",
    uriStyle,
    prefix: prefixOf(value("S3_PREFIX"), name("S3_PREFIX")),
    accessKeyId,
    secretAccessKey,
    caFile: value("S3_CA_FILE") === "" ? "" : path.resolve(value("S3_CA_FILE")),
    requestChecksums: checksum === "on",
  };
}

/** Repository 1's directory: RELEVO_REPO1_PATH or RELEVO_REPOSITORY (the same if both), else `<home>/repository`. */
function directoryPath(index: number, given: string, defaults: { readonly home: string; readonly repository: string }): string {
  if (index !== 1) {
    if (given === "") throw invalid(`RELEVO_REPO${index}_PATH`, "a directory repository needs its path");
    return path.resolve(given);
  }
  if (given !== "" && defaults.repository !== "" && path.resolve(given) !== path.resolve(defaults.repository)) {
    throw invalid("RELEVO_REPO1_PATH", "RELEVO_REPOSITORY names another directory: set one of them");
  }
  const chosen = given || defaults.repository;
  return chosen === "" ? path.join(defaults.home, "repository") : path.resolve(chosen);
}

/** https, or http to a loopback address only (credentials and backups would travel in clear otherwise). */
function checkEndpoint(endpoint: string, variable: string): void {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw invalid(variable, "a URL such as https://s3.example.com");
  }
  if (url.username || url.password || url.search || url.hash || (url.pathname !== "/" && url.pathname !== "")) {
    throw invalid(variable, "scheme, host and port only (credentials go in their own variables)");
  }
  const host = url.hostname.replace(/^\[|\]$/g, "");
  if (url.protocol === "http:" && !isLoopback(host)) {
    throw invalid(variable, "https (http only to a loopback address: the store's credentials and the backups would travel in clear)");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw invalid(variable, "an https:// URL");
}

function prefixOf(raw: string, variable: string): string {
  const trimmed = raw.replace(/^\/+|\/+$/g, "");
  if (trimmed === "") return "";
  if (!trimmed.split("/").every((segment) => /^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$/.test(segment))) {
    throw invalid(variable, "segments of letters, digits, '.', '_' and '-', separated by '/'");
  }
  return `${trimmed}/`;
}

function count(raw: string, variable: string, max: number): number | null {
  if (raw === "") return null;
  if (!/^\d+$/.test(raw) || Number(raw) < 1 || Number(raw) > max) throw invalid(variable, `a whole number from 1 to ${max}`);
  return Number(raw);
}

function invalid(variable: string, expected: string, options: { readonly secret?: boolean } = {}): RelevoError {
  return new RelevoError(
    ErrorCode.InvalidConfig,
    `invalid configuration: ${variable}${options.secret ? " (value not shown)" : ""}: ${expected}`,
    { details: { env: variable } },
  );
}

/** What expiry keeps in a repository: its own rules, its count falling back to the cluster's RELEVO_RETENTION_FULL. Pure. */
export function retentionOf(settings: RepositorySettings, clusterKeepFull: number): { keepFull: number; keepDays: number | null } {
  return { keepFull: settings.retentionFull ?? clusterKeepFull, keepDays: settings.retentionDays };
}
