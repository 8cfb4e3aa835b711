import { expect } from "@jest/globals";
import { execFile, spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import type { ClusterSnapshot } from "../../src/cluster/topology";
import { loadOrCreateSecrets } from "../../src/secrets/secrets-store";
import { isPortFree } from "../../src/util/ports";
import { projectRoot } from "../../src/util/project-root";
import { fakeServerOfAnotherUser } from "../helpers/fake-servers";
import { graphqlRequest } from "../helpers/graphql-client";
import { tempHome } from "../helpers/home";
import { freePort } from "../helpers/ports";
import { processesMentioning } from "../helpers/processes";

const execFileAsync = promisify(execFile);
const BIN = path.join(projectRoot(), "bin/relevo");

/**
 * The README's run command, as a user runs it: `relevo up` in the
 * foreground, the printed URL and token, the CLI beside it, SIGTERM, and
 * nothing left running. Then once more on the same data home.
 */
describe("README smoke test: relevo up, the CLI, SIGTERM", () => {
  let env: NodeJS.ProcessEnv;
  let ports: { api: number; primary: number; replica: number; redis: number };

  beforeAll(async () => {
    ports = { api: await freePort(), primary: await freePort(), replica: await freePort(), redis: await freePort() };
    env = {
      ...process.env,
      RELEVO_HOME: await tempHome("smoke"),
      RELEVO_API_PORT: String(ports.api),
      RELEVO_PRIMARY_PORT: String(ports.primary),
      RELEVO_REPLICA_PORT: String(ports.replica),
      RELEVO_REDIS_PORT: String(ports.redis),
      RELEVO_LOG_LEVEL: "warn",
    };
  });

  /** `relevo up` directly, or the README's command (`npm run quickstart`) in a process group of its own, like a terminal. */
  async function up(
    command: "relevo" | "quickstart" = "relevo",
  ): Promise<{ child: ChildProcessWithoutNullStreams; url: string; token: string; output: () => string; closed: Promise<void> }> {
    const child =
      command === "relevo"
        ? spawn("node", [BIN, "up"], { env })
        : spawn("npm", ["run", "--silent", "quickstart"], { env, cwd: projectRoot(), detached: true });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    // Standard output closes once every process holding it (npm, the shell, Relevo) has exited.
    const closed = new Promise<void>((resolve) => child.stdout.once("close", () => resolve()));
    const deadline = Date.now() + 180000;
    while (!/Operator token:\s+.*\n/.test(output)) {
      if (child.exitCode !== null) throw new Error(`relevo up exited with ${child.exitCode}: ${output}`);
      if (Date.now() > deadline) throw new Error(`relevo up printed no token: ${output}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const url = /GraphQL and GraphiQL:\s+(\S+)/.exec(output)![1]!;
    // Standard output is a pipe here, as in a container's log: the token is not printed, `relevo token` gives one.
    expect(output).toMatch(/Operator token:\s+not printed \(standard output is not a terminal\): run "relevo token"/);
    expect(output).not.toContain("rlv.operator.");
    const token = (await execFileAsync("node", [BIN, "token"], { env })).stdout.trim();
    return { child, url, token, output: () => output, closed };
  }

  async function terminate(child: ChildProcessWithoutNullStreams): Promise<number | null> {
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    child.kill("SIGTERM");
    return exited;
  }

  test("npm run quickstart prints the URL (the operator token only to a terminal); the cluster query answers; SIGTERM stops everything", async () => {
    const { child, url, token, output, closed } = await up("quickstart");
    expect(url).toBe(`http://127.0.0.1:${ports.api}/graphql`);
    const response = await graphqlRequest<{
      cluster: {
        primary: { name: string };
        nodes: Array<{ name: string; role: string; reachable: boolean; replication: { state: string } | null }>;
      };
    }>(url, "{ cluster { primary { name } nodes { name role reachable replication { state } } } }", { token });
    expect(response.data?.cluster).toEqual({
      primary: { name: "node1" },
      nodes: [
        { name: "node1", role: "PRIMARY", reachable: true, replication: null },
        { name: "node2", role: "REPLICA", reachable: true, replication: { state: "STREAMING" } },
      ],
    });

    const status = JSON.parse((await execFileAsync("node", [BIN, "status", "--json"], { env })).stdout) as ClusterSnapshot;
    expect(status.nodes.map((n) => [n.name, n.role, n.reachable])).toEqual([
      ["node1", "primary", true],
      ["node2", "replica", true],
    ]);
    expect(status.nodes[0]!.driver).toMatchObject({
      kind: "local",
      pid: expect.any(Number),
      dataDirectory: path.join(env.RELEVO_HOME!, "nodes", "node1", "data"),
    });
    const table = (await execFileAsync("node", [BIN, "status"], { env })).stdout;
    expect(table).toMatch(/node2\s+replica\s+127\.0\.0\.1:\d+\s+yes\s+streaming/);

    const viewer = (await execFileAsync("node", [BIN, "token", "--role", "viewer"], { env })).stdout.trim();
    expect(viewer).toMatch(/^rlv\.viewer\./);
    const denied = await graphqlRequest(url, "mutation { refreshTopology { name } }", { token: viewer });
    expect(denied.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");

    const primaryUrl = (await execFileAsync("node", [BIN, "url"], { env })).stdout.trim();
    await execFileAsync("psql", [primaryUrl, "-c", "CREATE TABLE survives_restart (id int)"]);
    const replicaUrl = (await execFileAsync("node", [BIN, "url", "node2"], { env })).stdout.trim();
    expect((await execFileAsync("psql", [replicaUrl, "-Atc", "SELECT pg_is_in_recovery()"])).stdout.trim()).toBe("t");
    const multi = (await execFileAsync("node", [BIN, "url", "--multi-host"], { env })).stdout.trim();
    expect(multi).toContain("target_session_attrs=read-write");
    expect((await execFileAsync("psql", [multi, "-Atc", "SELECT current_setting('port')"])).stdout.trim()).toBe(String(ports.primary));

    expect(output()).not.toContain(primaryUrl.split(":")[2]!.split("@")[0]!); // no password in the output
    process.kill(-child.pid!, "SIGTERM"); // what a terminal does to its foreground process group
    await closed;
    expect(output()).toContain("Relevo stopped.");
    expect(await processesMentioning(env.RELEVO_HOME!)).toEqual([]);
    for (const port of Object.values(ports)) expect(await isPortFree("127.0.0.1", port)).toBe(true);
  });

  test("up again reuses the existing cluster (data kept), and stops cleanly again", async () => {
    const { child } = await up();
    const primaryUrl = (await execFileAsync("node", [BIN, "url"], { env })).stdout.trim();
    expect((await execFileAsync("psql", [primaryUrl, "-Atc", "SELECT count(*) FROM survives_restart"])).stdout.trim()).toBe("0");

    // The failover commands wait for the operation and exit with the error's status.
    const relevo = (...args: string[]) => execFileAsync("node", [BIN, ...args], { env, timeout: 120000 });
    const failing = (...args: string[]) =>
      relevo(...args).then(
        () => ({ code: 0, stderr: "" }),
        (error: { code: number; stderr: string }) => error,
      );
    expect((await relevo("maintenance", "on")).stdout).toContain("maintenance on");
    expect(await failing("switchover", "--to", "node9")).toMatchObject({ code: 64, stderr: expect.stringContaining("NOT_FOUND") });
    expect(await failing("failover")).toMatchObject({ code: 1, stderr: expect.stringContaining("PRECONDITION_FAILED") });
    expect((await relevo("switchover", "--to", "node2")).stdout).toMatch(/switchover \S+: node1 → node2 completed/);
    expect((JSON.parse((await relevo("status", "--json")).stdout) as ClusterSnapshot).primary).toBe("node2");
    expect((await relevo("failback")).stdout).toMatch(/failback \S+: node2 → node1 completed/);
    expect((await relevo("rejoin", "node2")).stdout).toContain("node2 rejoined as a replica (restart)");
    expect((await relevo("replica", "add", "extra")).stdout).toMatch(/extra added as a streaming replica on port \d+/);
    expect((await relevo("replica", "remove", "extra")).stdout).toContain("extra removed");
    expect((await relevo("maintenance", "off")).stdout).toContain("maintenance off");
    expect(await terminate(child)).toBe(0);
    expect(await processesMentioning(env.RELEVO_HOME!)).toEqual([]);
  });
});

/**
 * Review 13, M4: while `relevo up` is stopped, any local user may listen on
 * the API's port. The CLI's commands mint an operator token for each call;
 * it must reach only Relevo's own service (the test above runs them against
 * it), never a stranger.
 */
describe("the CLI sends its operator token to no stranger on the API's port", () => {
  const asRoot = process.getuid?.() === 0 ? test : test.skip;

  asRoot("backup create against a server run as nobody: exit 73 with API_NOT_OURS, and no authorization header reached it", async () => {
    const stranger = await fakeServerOfAnotherUser(65534, "http");
    try {
      const home = await tempHome("stranger-api");
      await loadOrCreateSecrets(home);
      const env = { ...process.env, RELEVO_HOME: home, RELEVO_API_PORT: String(stranger.port), RELEVO_LOG_LEVEL: "warn" };
      const outcome = await execFileAsync("node", [BIN, "backup", "create"], { env, timeout: 60000 }).then(
        () => ({ code: 0, stderr: "" }),
        (error: { code: number; stderr: string }) => error,
      );
      const received = (await stranger.received()).toString("latin1");
      expect(received).not.toMatch(/authorization/i);
      expect(received).toBe("");
      expect(outcome).toMatchObject({
        code: 73,
        stderr: expect.stringMatching(/relevo: error \[API_NOT_OURS\]: .*run by uid 65534.*No token was sent/),
      });
    } finally {
      await stranger.close();
    }
  });
});
