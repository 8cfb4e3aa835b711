import { expect } from "@jest/globals";
import { execFile } from "node:child_process";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { promisify } from "node:util";
import { isPortFree } from "../../src/util/ports";
import { ErrorCode } from "../../src/errors";
import { createLogger } from "../../src/log";
import { startRelevo } from "../../src/service";
import { processesMentioning } from "../helpers/processes";
import { testConfig } from "../helpers/service";
import { projectRoot } from "../../src/util/project-root";
import { DirectoryStore } from "../../src/repository/directory-store";
import { RepositoryKeyring } from "../../src/repository/repository-keyring";
import { readdir } from "node:fs/promises";

const execFileAsync = promisify(execFile);
const silent = createLogger({ level: "silent" });

function occupy(port: number): Promise<net.Server> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}

async function expectNothingLeft(config: { home: string; redisPort: number; primaryPort: number; replicaPort: number; apiPort: number }) {
  expect(await processesMentioning(config.home)).toEqual([]);
  for (const port of [config.redisPort, config.primaryPort, config.replicaPort, config.apiPort]) {
    expect(await isPortFree("127.0.0.1", port)).toBe(true);
  }
}

describe("start-up errors: a clear code, a message naming the fix, nothing left running", () => {
  test("the replica's port is in use: PORT_IN_USE names the port and RELEVO_REPLICA_PORT; Redis and the primary are stopped again", async () => {
    const config = await testConfig("port");
    const blocker = await occupy(config.replicaPort);
    try {
      await expect(startRelevo(config, silent)).rejects.toMatchObject({
        code: ErrorCode.PortInUse,
        message: expect.stringMatching(new RegExp(`port ${config.replicaPort} .*RELEVO_REPLICA_PORT`)),
      });
    } finally {
      await new Promise((resolve) => blocker.close(resolve));
    }
    await expectNothingLeft(config);
  });

  test("the API port is in use: PORT_IN_USE before anything starts", async () => {
    const config = await testConfig("apiport");
    const blocker = await occupy(config.apiPort);
    try {
      await expect(startRelevo(config, silent)).rejects.toMatchObject({
        code: ErrorCode.PortInUse,
        message: expect.stringContaining("RELEVO_API_PORT"),
      });
      expect(await processesMentioning(config.home)).toEqual([]);
      expect(await isPortFree("127.0.0.1", config.redisPort)).toBe(true);
    } finally {
      await new Promise((resolve) => blocker.close(resolve));
    }
  });

  test("PostgreSQL binaries missing: MISSING_BINARY says which package to install", async () => {
    const config = await testConfig("nopg", { pgBinDir: "/nonexistent/postgresql/15/bin" });
    await expect(startRelevo(config, silent)).rejects.toMatchObject({
      code: ErrorCode.MissingBinary,
      message: expect.stringMatching(/apt-get install -y postgresql-15.*RELEVO_PG_BIN_DIR/),
    });
  });

  test("redis-server missing: MISSING_BINARY says which package to install", async () => {
    const config = await testConfig("noredis", { redisServerBin: "/nonexistent/redis-server" });
    await expect(startRelevo(config, silent)).rejects.toMatchObject({
      code: ErrorCode.MissingBinary,
      message: expect.stringMatching(/apt-get install -y redis-server.*RELEVO_REDIS_SERVER_BIN/),
    });
    await expectNothingLeft(config);
  });

  test("a data directory that is not ours, or from another PostgreSQL version, is refused untouched", async () => {
    const foreign = await testConfig("foreign");
    const dataDir = path.join(foreign.home, "nodes", "node1", "data");
    await mkdir(dataDir, { recursive: true });
    await writeFile(path.join(dataDir, "precious.txt"), "not a database");
    await expect(startRelevo(foreign, silent)).rejects.toMatchObject({
      code: ErrorCode.DataDirNotOurs,
      message: expect.stringContaining(dataDir),
    });
    await expectNothingLeft(foreign);
    expect(await readFile(path.join(dataDir, "precious.txt"), "utf8")).toBe("not a database");

    const older = await testConfig("older");
    const olderDir = path.join(older.home, "nodes", "node1", "data");
    await mkdir(olderDir, { recursive: true });
    await writeFile(path.join(olderDir, "PG_VERSION"), "14\n");
    await expect(startRelevo(older, silent)).rejects.toMatchObject({
      code: ErrorCode.DataDirIncompatible,
      message: expect.stringContaining("PostgreSQL 14"),
    });
    await expectNothingLeft(older);
  });

  test("an encrypted repository and no pass, or a wrong one: REPOSITORY_ACCESS_DENIED naming the variable; nothing written, nothing left", async () => {
    const variable = "RELEVO_REPO1_CIPHER_PASS";
    const made = await testConfig("encrypted-start");
    const root = (made.repositories[0] as { path: string }).path;
    // The repository's keys, as a first start with the pass made them (one maker: nothing for the lock to exclude).
    await RepositoryKeyring.open(new DirectoryStore(root), {
      cipherPass: "the pass the repository was made with",
      variable,
      create: true,
      lock: (work) => work(),
      scrypt: { N: 2 ** 12, r: 8, p: 1 },
    });
    const keysBefore = await readdir(path.join(root, "keys"), { recursive: true });
    for (const env of [{}, { [variable]: "a pass that is not the repository's" }]) {
      const config = await testConfig("encrypted-start", { home: made.home }, env);
      // A start that is not refused is stopped again, so that the failure leaves nothing running.
      const refusal = await startRelevo(config, silent).then(
        (service) => service.stop().then(() => null),
        (error: unknown) => error,
      );
      expect(refusal).toMatchObject({
        code: ErrorCode.RepositoryAccessDenied,
        details: { env: variable },
        message: expect.stringContaining(variable),
      });
      await expectNothingLeft(config);
    }
    expect(await readdir(path.join(root, "keys"), { recursive: true })).toEqual(keysBefore);
    // No object but the keys (the start makes the repository's empty directories before it reads them).
    const objects: string[] = [];
    for await (const info of new DirectoryStore(root).list("")) objects.push(info.key);
    expect(objects.filter((key) => !key.startsWith("keys/"))).toEqual([]);
  });

  test("the CLI: an invalid value exits 78 naming the variable, on standard error", async () => {
    const failure = await execFileAsync("node", [path.join(projectRoot(), "bin/relevo"), "up"], {
      env: { ...process.env, RELEVO_API_PORT: "four-thousand" },
    }).catch((error: { code: number; stderr: string }) => error);
    expect(failure).toMatchObject({ code: 78, stderr: expect.stringMatching(/INVALID_CONFIG.*RELEVO_API_PORT/) });
  });

  test("the CLI: commands that need a data home say how to get one", async () => {
    const failure = await execFileAsync("node", [path.join(projectRoot(), "bin/relevo"), "token"], {
      env: { ...process.env, RELEVO_HOME: "/nonexistent/relevo-home" },
    }).catch((error: { code: number; stderr: string }) => error);
    expect(failure).toMatchObject({ code: 1, stderr: expect.stringMatching(/PRECONDITION_FAILED.*relevo up/) });
  });
});
