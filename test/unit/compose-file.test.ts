import { readFileSync } from "node:fs";
import path from "node:path";
import { parse } from "yaml";
import { configKeys } from "../../src/config/config-keys";
import { projectRoot } from "../../src/util/project-root";

/**
 * docker-compose.yml parsed and held to what the stack promises (CI also runs
 * `docker-compose config`): the node services are Relevo's to adopt and
 * restart, Redis persists, Relevo's API is built here and drives the engine,
 * every secret comes from .env, and every variable the file uses is in
 * .env.example.
 */
describe("docker-compose.yml", () => {
  const root = projectRoot();
  const text = readFileSync(path.join(root, "docker-compose.yml"), "utf8");
  const compose = parse(text, { merge: true }) as {
    services: Record<
      string,
      Record<string, unknown> & { labels?: Record<string, string>; environment?: Record<string, string>; volumes?: string[] }
    >;
    volumes: Record<string, { name?: string } | null>;
  };
  const nodes = Object.values(compose.services).filter((service) => service.labels?.["io.relevo.role"] === "node");

  test("a primary and a replica of the official image, labelled for adoption, never restarted by the engine", () => {
    expect(nodes.map((service) => service.labels!["io.relevo.node"]).sort()).toEqual(["node1", "node2"]);
    for (const service of nodes) {
      expect(service.image).toBe("${POSTGRES_IMAGE:-postgres:15}");
      expect(service.restart).toBe("no");
      expect(service.network_mode).toBe("host");
      expect(service.stop_signal).toBe("SIGINT");
      expect(service.labels!["io.relevo.cluster"]).toBe(compose.services.relevo!.environment!.RELEVO_CLUSTER_NAME);
      // PGDATA in a volume named as Relevo names it; nothing of the repository (a node never reads it).
      const node = service.labels!["io.relevo.node"]!;
      const [dataVolume] = service.volumes!.find((entry) => entry.endsWith(":/var/lib/postgresql/data"))!.split(":");
      expect(compose.volumes[dataVolume!]?.name).toBe(`relevo-relevo-${node}-data`);
      expect(service.volumes!.filter((entry) => entry.startsWith("repository:"))).toEqual([]);
    }
  });

  test("Redis persists (append-only, a volume) and asks for a password from .env", () => {
    const redis = compose.services.redis!;
    expect(JSON.stringify(redis.command)).toContain("--appendonly yes");
    expect(JSON.stringify(redis.command)).toContain("--bind 127.0.0.1");
    expect(redis.volumes).toContain("redis-data:/data");
    expect(redis.environment!.REDIS_PASSWORD).toMatch(/^\$\{REDIS_PASSWORD:\?/);
  });

  test("Relevo's API is built from the Dockerfile, drives the engine through its socket, uses the stack's Redis and repository volume", () => {
    const relevo = compose.services.relevo!;
    expect(relevo.build).toEqual({ context: ".", network: "host" });
    expect(relevo.volumes).toContain("/var/run/docker.sock:/var/run/docker.sock");
    const environment = relevo.environment!;
    expect(environment.RELEVO_DRIVER).toBe("docker");
    expect(environment.RELEVO_REDIS_URL).toMatch(/^redis:\/\/:\$\{REDIS_PASSWORD/);
    expect(compose.volumes.repository?.name).toBe("relevo-repository");
    expect(relevo.volumes).toContain(`repository:${environment.RELEVO_REPOSITORY}`);
    // Every RELEVO_ variable it sets is a real configuration key.
    const known = new Set<string>(Object.values(configKeys).map((key) => key.env));
    for (const name of Object.keys(environment)) expect(known.has(name) ? name : `unknown ${name}`).toBe(name);
    expect(readFileSync(path.join(root, "Dockerfile"), "utf8")).toMatch(/postgresql-15/);
  });

  test("every variable the file uses is in .env.example, which holds no real secret; .env is never committed", () => {
    const used = new Set([...text.matchAll(/\$\{([A-Z_]+)/g)].map((match) => match[1]!));
    const example = readFileSync(path.join(root, ".env.example"), "utf8");
    const defined = new Set([...example.matchAll(/^([A-Z_]+)=/gm)].map((match) => match[1]!));
    expect([...used].filter((name) => !defined.has(name))).toEqual([]);
    expect(example).toMatch(/^REDIS_PASSWORD=replace-with/m);
    expect(readFileSync(path.join(root, ".gitignore"), "utf8").split("\n")).toContain(".env");
    expect(readFileSync(path.join(root, ".dockerignore"), "utf8").split("\n")).toContain(".env");
  });
});
