import type { RelevoConfig } from "../../src/config/config";

/** The environment a `relevo` CLI process needs to act on a test cluster (its home, names, ports, driver). */
export function cliEnvFor(config: RelevoConfig, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return {
    ...process.env,
    RELEVO_HOME: config.home,
    RELEVO_DRIVER: config.driver,
    RELEVO_DOCKER_IMAGE: config.dockerImage,
    RELEVO_CLUSTER_NAME: config.clusterName,
    RELEVO_API_PORT: String(config.apiPort),
    RELEVO_PRIMARY_PORT: String(config.primaryPort),
    RELEVO_REPLICA_PORT: String(config.replicaPort),
    RELEVO_REDIS_PORT: String(config.redisPort),
    RELEVO_API_TLS: config.apiTls,
    RELEVO_LOG_LEVEL: "warn",
    ...extra,
  };
}
