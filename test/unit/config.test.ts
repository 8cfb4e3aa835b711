import { expect } from "@jest/globals";
import path from "node:path";
import { parseRedisUrl } from "../../src/redis/redis-client";
import { externalRedisEndpoint } from "../../src/redis/redis-server";
import { describeConfig, loadConfig } from "../../src/config/config";
import { ErrorCode } from "../../src/errors";

describe("configuration", () => {
  test("defaults avoid a system PostgreSQL (5432) and Redis (6379)", () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      apiPort: 4000,
      primaryPort: 15432,
      replicaPort: 15433,
      redisPort: 16379,
      replicaCount: 1,
      driver: "local",
      host: "127.0.0.1",
    });
    expect(config.home).toBe(path.resolve("./.relevo"));
  });

  test("environment variables override defaults, overrides override the environment", () => {
    const config = loadConfig({ RELEVO_API_PORT: "4100", RELEVO_REPLICA_COUNT: "2", RELEVO_HOME: "/tmp/x" }, { apiPort: 4200 });
    expect(config.apiPort).toBe(4200);
    expect(config.replicaCount).toBe(2);
    expect(config.home).toBe("/tmp/x");
  });

  test("a loaded configuration given back as overrides loads as itself (periods in milliseconds included)", () => {
    const config = loadConfig({ RELEVO_EVENTS_RETENTION: "7d", RELEVO_TOKEN_TTL: "90m" });
    const again = loadConfig({}, { ...config });
    expect(again).toEqual(config);
    expect(again.eventsRetention).toBe(7 * 86_400_000);
  });

  test.each([
    ["RELEVO_API_PORT", "not-a-port"],
    ["RELEVO_PRIMARY_PORT", "70000"],
    ["RELEVO_DRIVER", "kubernetes"],
    ["RELEVO_MAX_SLOT_WAL_KEEP_SIZE", "lots"],
    ["RELEVO_TOPOLOGY_POLL_INTERVAL_MS", "5"],
    ["RELEVO_CLUSTER_NAME", "Bad Name"],
    // Below four segments a full spool could never fall under its resume mark (two segments are never dropped).
    ["RELEVO_WAL_SPOOL_MAX", String(48 * 1024 * 1024)],
    // Written into listen_addresses, pg_hba.conf and connection strings: a newline there would add a rule of its own.
    ["RELEVO_HOST", "127.0.0.1/32 scram-sha-256\nhost all all 0.0.0.0/0 trust\n#"],
  ])("an invalid %s is INVALID_CONFIG naming the variable", (env, value) => {
    expect(() => loadConfig({ [env]: value })).toThrow(
      expect.objectContaining({ code: ErrorCode.InvalidConfig, message: expect.stringContaining(env) }),
    );
  });

  test("two servers on one port is INVALID_CONFIG naming both", () => {
    expect(() => loadConfig({ RELEVO_API_PORT: "15432" })).toThrow(
      expect.objectContaining({ code: ErrorCode.InvalidConfig, message: expect.stringMatching(/port 15432 .*the API and the primary/) }),
    );
    expect(() => loadConfig({ RELEVO_REPLICA_COUNT: "2", RELEVO_REPLICA_PORT: "16378" })).toThrow(
      expect.objectContaining({ code: ErrorCode.InvalidConfig }),
    );
  });

  test("every key has a RELEVO_ variable and a description", () => {
    for (const row of describeConfig()) {
      expect(row.env).toMatch(/^RELEVO_[A-Z0-9_]+$/);
      expect(row.doc.length).toBeGreaterThan(10);
    }
  });

  test("the docker driver's engine: RELEVO_DOCKER_HOST, else the docker CLI's DOCKER_HOST; TLS from DOCKER_CERT_PATH only when DOCKER_TLS_VERIFY is set", () => {
    expect(loadConfig({}).dockerHost).toBe("");
    expect(loadConfig({ DOCKER_HOST: "tcp://10.0.0.1:2376" }).dockerHost).toBe("tcp://10.0.0.1:2376");
    expect(loadConfig({ DOCKER_HOST: "tcp://10.0.0.1:2376", RELEVO_DOCKER_HOST: "unix:///run/docker.sock" }).dockerHost).toBe(
      "unix:///run/docker.sock",
    );
    expect(loadConfig({ DOCKER_CERT_PATH: "/certs" }).dockerCertPath).toBe("");
    expect(loadConfig({ DOCKER_CERT_PATH: "/certs", DOCKER_TLS_VERIFY: "1" }).dockerCertPath).toBe("/certs");
    expect(() => loadConfig({ RELEVO_DRIVER: "kubernetes" })).toThrow(
      expect.objectContaining({ code: ErrorCode.InvalidConfig, message: expect.stringContaining("RELEVO_DRIVER") }),
    );
  });

  test("RELEVO_REDIS_URL: an external Redis with its password; anything but redis:// is INVALID_CONFIG", () => {
    expect(parseRedisUrl(loadConfig({ RELEVO_REDIS_URL: "redis://:s%40cret@127.0.0.1:16379" }).redisUrl)).toEqual({
      host: "127.0.0.1",
      port: 16379,
      password: "s@cret",
      external: true, // not proven to be run by Relevo's own user, as its own Redis is (docs/security.md)
    });
    expect(parseRedisUrl("redis://redis")).toEqual({ host: "redis", port: 6379, password: "", external: true });
    expect(() => loadConfig({ RELEVO_REDIS_URL: "http://127.0.0.1:6379" })).toThrow(
      expect.objectContaining({ code: ErrorCode.InvalidConfig, message: expect.stringContaining("RELEVO_REDIS_URL") }),
    );
  });

  test("a redis:// RELEVO_REDIS_URL off loopback is refused unless RELEVO_REDIS_TLS=off accepts plaintext", () => {
    for (const url of ["redis://:pw@10.0.0.5:6379", "redis://:pw@db.example.com:6379", "redis://redis"]) {
      expect(() => loadConfig({ RELEVO_REDIS_URL: url })).toThrow(
        expect.objectContaining({
          code: ErrorCode.InvalidConfig,
          details: { env: "RELEVO_REDIS_URL" },
          message: expect.stringMatching(/not a loopback address.*rediss:\/\/.*RELEVO_REDIS_TLS=off/),
        }),
      );
      expect(loadConfig({ RELEVO_REDIS_URL: url, RELEVO_REDIS_TLS: "off" }).redisUrl).toBe(url);
    }
    // Loopback stays on the machine; rediss:// is TLS.
    expect(loadConfig({ RELEVO_REDIS_URL: "redis://:pw@127.0.0.1:6379" }).redisTls).toBe("auto");
    expect(loadConfig({ RELEVO_REDIS_URL: "redis://:pw@localhost:6379" }).redisTls).toBe("auto");
    expect(loadConfig({ RELEVO_REDIS_URL: "rediss://:pw@db.example.com:6380" }).redisTls).toBe("auto");
    // "off" means nothing beside Relevo's own Redis (TLS only) or a rediss:// URL: refused rather than ignored.
    for (const env of [{}, { RELEVO_REDIS_URL: "rediss://:pw@db.example.com:6380" }]) {
      expect(() => loadConfig({ ...env, RELEVO_REDIS_TLS: "off" })).toThrow(
        expect.objectContaining({ code: ErrorCode.InvalidConfig, details: { env: "RELEVO_REDIS_TLS" } }),
      );
    }
  });

  test("an invalid RELEVO_REDIS_URL is not quoted back: it carries Redis's password", () => {
    expect(() => loadConfig({ RELEVO_REDIS_URL: "http://:hunter2-secret@127.0.0.1:6379" })).toThrow(
      expect.objectContaining({ code: ErrorCode.InvalidConfig, message: expect.not.stringContaining("hunter2-secret") as unknown }),
    );
  });

  test("rediss:// is TLS (Node's root CAs until RELEVO_REDIS_CA_FILE is read); its files go with rediss:// only, cert with key", () => {
    expect(parseRedisUrl("rediss://:pw@redis.example.org:6380")).toEqual({
      host: "redis.example.org",
      port: 6380,
      password: "pw",
      external: true,
      tls: {},
    });
    const config = loadConfig({
      RELEVO_REDIS_URL: "rediss://:pw@redis.example.org:6380",
      RELEVO_REDIS_CA_FILE: "ca.pem",
      RELEVO_REDIS_CERT_FILE: "/etc/relevo/redis-client.crt",
      RELEVO_REDIS_KEY_FILE: "/etc/relevo/redis-client.key",
    });
    expect(config.redisCaFile).toBe(path.resolve("ca.pem"));
    const invalid = (env: NodeJS.ProcessEnv, named: string) =>
      expect(() => loadConfig(env)).toThrow(
        expect.objectContaining({ code: ErrorCode.InvalidConfig, details: { env: named }, message: expect.stringContaining(named) }),
      );
    // Relevo's own Redis (no URL) takes its TLS from Relevo's CA; a plain redis:// URL has none.
    invalid({ RELEVO_REDIS_CA_FILE: "ca.pem" }, "RELEVO_REDIS_CA_FILE");
    invalid(
      { RELEVO_REDIS_URL: "redis://:pw@127.0.0.1:6379", RELEVO_REDIS_CERT_FILE: "c.pem", RELEVO_REDIS_KEY_FILE: "k.pem" },
      "RELEVO_REDIS_CERT_FILE",
    );
    invalid({ RELEVO_REDIS_URL: "rediss://:pw@127.0.0.1:6379", RELEVO_REDIS_CERT_FILE: "c.pem" }, "RELEVO_REDIS_KEY_FILE");
    invalid({ RELEVO_REDIS_URL: "rediss://:pw@127.0.0.1:6379", RELEVO_REDIS_KEY_FILE: "k.pem" }, "RELEVO_REDIS_CERT_FILE");
  });

  test("an unreadable RELEVO_REDIS_CA_FILE stops the start with INVALID_CONFIG naming it", async () => {
    const config = loadConfig({ RELEVO_REDIS_URL: "rediss://:pw@127.0.0.1:6379", RELEVO_REDIS_CA_FILE: "/nonexistent/ca.pem" });
    await expect(externalRedisEndpoint(config)).rejects.toMatchObject({
      code: ErrorCode.InvalidConfig,
      details: { env: "RELEVO_REDIS_CA_FILE" },
    });
  });
});
