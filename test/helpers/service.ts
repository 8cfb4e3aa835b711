import { readFile } from "node:fs/promises";
import { loadConfig, type ConfigOverrides, type RelevoConfig } from "../../src/config/config";
import { createLogger } from "../../src/log";
import { mintToken, type Role } from "../../src/secrets/tokens";
import { startRelevo, type RelevoService } from "../../src/service";
import { tempHome } from "./home";
import { freePort } from "./ports";
import { trustCa, trustServicesCa } from "./tls";

export interface TestCluster {
  readonly config: RelevoConfig;
  readonly service: RelevoService;
  readonly url: string;
  token(role: Role): string;
  stop(): Promise<void>;
}

/** How a test's service differs beyond its configuration keys. */
export interface TestClusterOptions {
  /** Variables read from the environment only (RELEVO_REPO<n>_…). */
  readonly env?: NodeJS.ProcessEnv;
  /** Where the service logs (every line, at the config's level); stderr by default. */
  readonly logDestination?: { write(line: string): void };
}

/** Config for a test: own data home, free ports, quick polling, quiet logs. */
export async function testConfig(label: string, overrides: ConfigOverrides = {}, env: NodeJS.ProcessEnv = {}): Promise<RelevoConfig> {
  return loadConfig(env, {
    home: await tempHome(label),
    clusterName: "test",
    apiPort: await freePort(),
    primaryPort: await freePort(),
    replicaPort: await freePort(),
    redisPort: await freePort(),
    topologyPollIntervalMs: 250,
    // Agenda leaves a keep-alive timer of half the lock lifetime behind each job it ran.
    schedulerLockLifetimeMs: 2000,
    // No scheduled job fires in the middle of a test (the incremental runs
    // hourly): the scheduler's own tests turn the defaults back on.
    scheduleFullBackup: "off",
    scheduleDifferentialBackup: "off",
    scheduleIncrementalBackup: "off",
    scheduleVerify: "off",
    // No rate limit on the monitor's confirming CHECKPOINTs: a test that takes a standby out of the set and back
    // within 30 s would otherwise wait out the interval (the limit itself is unit-tested in commit-wait.test.ts).
    commitWaitCheckpointIntervalMs: 0,
    logLevel: process.env.RELEVO_TEST_LOG_LEVEL ?? "silent",
    ...overrides,
  });
}

/** The whole service (nodes, Redis, API) as `relevo up` starts it, in this process. */
export async function startTestCluster(
  label: string,
  overrides: ConfigOverrides = {},
  options: TestClusterOptions = {},
): Promise<TestCluster> {
  const config = await testConfig(label, overrides, options.env);
  const service = await startRelevo(config, createLogger({ level: config.logLevel, destination: options.logDestination }));
  trustCa(service.trustedCa.pem);
  trustServicesCa(await readFile(service.servicesCaFile, "utf8"));
  return {
    config,
    service,
    url: service.apiUrl,
    token: (role) => mintToken(service.secrets.tokenKey, role).token,
    stop: () => service.stop({ reason: "test finished" }),
  };
}

/** Polls `check` (synchronous, or async) until it returns a value (not undefined) or the time is up. */
export async function eventually<T>(
  check: () => T | undefined | Promise<T | undefined>,
  options: { timeoutMs?: number; what?: string } = {},
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 30000);
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`timed out waiting for ${options.what ?? "condition"}${lastError ? `: ${(lastError as Error).message}` : ""}`);
}

/**
 * One cluster for a whole describe block: started before its first test,
 * stopped after its last (its data home stays for inspection). The returned
 * object stands for that cluster inside tests.
 */
export function useTestCluster(label: string, overrides: ConfigOverrides = {}, options: TestClusterOptions = {}): TestCluster {
  let cluster: TestCluster | undefined;
  beforeAll(async () => {
    cluster = await startTestCluster(label, overrides, options);
  });
  afterAll(async () => {
    await cluster?.stop();
  });
  return new Proxy({} as TestCluster, {
    get: (_target, property) => {
      if (!cluster) throw new Error(`test cluster ${label} did not start`);
      return Reflect.get(cluster, property) as unknown;
    },
  });
}
