import { fixedTrust } from "../../src/postgres/connection";
import { expect } from "@jest/globals";
import { chown, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { BackupSession } from "../../src/backup/backup-session";
import { observeClusterOnce } from "../../src/cluster/topology-observe";
import { primaryAdapter } from "../../src/db/primary-database";
import { callApi } from "../../src/cli/api-client";
import { loadConfig } from "../../src/config/config";
import { ErrorCode, exitCodeFor, type RelevoError } from "../../src/errors";
import { PrimaryChecker } from "../../src/failover/primary-check";
import { createLogger } from "../../src/log";
import type { NodeRef } from "../../src/nodes/node-driver";
import { LocalDriver } from "../../src/nodes/local/local-driver";
import { withNodeClient, type Credentials } from "../../src/postgres/connection";
import { CertificateAuthority } from "../../src/tls/certificate-authority";
import { trustOnlyTlsSource } from "../../src/tls/node-tls";
import { readNodeFacts } from "../../src/postgres/node-facts";
import { createRedisClient } from "../../src/redis/redis-client";
import { ensureRedisServer } from "../../src/redis/redis-server";
import { loadOrCreateSecrets, secretsFile } from "../../src/secrets/secrets-store";
import { canonicalAddress, parseTcpTable, serverEndOwner } from "../../src/util/local-peer";
import { fakePostgres, fakeServerOfAnotherUser, type FakeServer, type PasswordRequest } from "../helpers/fake-servers";
import { testRedisTls } from "../helpers/tls";

/**
 * Issue 14, defect 2: whoever listens on a member's port (a stopped member's
 * port taken by another local user) or on Redis's port must not get a
 * password. Each case puts a stranger there and reads what it received.
 */
const PASSWORD = "the-superuser-password-nobody-else-knows";
const nodeOn = (port: number): NodeRef => ({ name: "node2", host: "127.0.0.1", port });
/**
 * The strangers below hold a certificate Relevo trusts: whoever runs as the
 * PostgreSQL OS user can read a node's key. TLS does not stop them then;
 * NodeClient's refusals do. (A stranger without one is refused by TLS
 * before any authentication: see the last case.)
 */
let ca: CertificateAuthority;
let strangerTls: { cert: string; key: string };
let superuser: Credentials;
beforeAll(async () => {
  const home = await mkdtemp(path.join(os.tmpdir(), "strangers-ca-"));
  ca = await CertificateAuthority.load(loadConfig({}, { home }));
  const issued = await ca.issueServerCertificate({ commonName: "node2", addresses: ["127.0.0.1"] });
  strangerTls = { cert: issued.certificatePem, key: issued.keyPem };
  superuser = { user: "postgres", password: PASSWORD, database: "postgres", trustedCa: fixedTrust(ca.certificatePem) };
  await rm(home, { recursive: true, force: true });
});

describe("PostgreSQL: a cleartext or MD5 password request gets no password, and a stable error", () => {
  let server: FakeServer | null = null;
  const stranger = async (request: PasswordRequest): Promise<FakeServer> => (server = await fakePostgres(request, { tls: strangerTls }));
  afterEach(async () => {
    await server?.close();
    server = null;
  });

  /** What the stranger got must not hold the password, nor anything at all (MD5's hash replays as the password). */
  const expectNothingSent = async (fake: FakeServer) => {
    const received = await fake.received();
    expect(received.toString("latin1")).not.toContain(PASSWORD);
    expect(received.length).toBe(0);
  };

  const refusal = (request: PasswordRequest) =>
    expect.objectContaining({
      code: ErrorCode.AuthMethodRefused,
      message: expect.stringContaining(`node2's port asked for a ${request === "cleartext" ? "cleartext" : "MD5"} password`),
    });

  /** What `work` ended with, value or error: what the stranger got is asserted first, as it is the point. */
  const outcomeOf = (work: Promise<unknown>): Promise<unknown> =>
    work.then(
      (value) => value,
      (error: unknown) => error,
    );

  test("SCRAM-SHA-256 goes on to the client's proof (never the password), alone and from Prisma's pool of NodeClients", async () => {
    const fake = await stranger("scram");
    const alone = await outcomeOf(withNodeClient(nodeOn(fake.port), superuser, 2000, () => Promise.resolve("connected")));
    await outcomeOf(throughPrismaPool(nodeOn(fake.port), "SELECT 1"));
    const received = (await fake.received()).toString("latin1");
    expect(received).not.toContain(PASSWORD);
    // Each connection sent its client-final message with a proof: the password was there to compute it (pg.Pool
    // hands its clients a password that is not enumerable; a client that copied its options would have lost it).
    // Over TLS, bound to the certificate: the channel-binding header `p=tls-server-end-point` (base64 "cD10bHMt…").
    expect(received.match(/c=cD10bHMtc2VydmVyLWVuZC1wb2ludC[A-Za-z0-9+/=]*,r=[^,]+,p=[A-Za-z0-9+/=]+/g)?.length).toBeGreaterThanOrEqual(2);
    expect(String(alone)).not.toMatch(/AUTH_METHOD_REFUSED|asked for a/);
  });

  /** SQL through the adapter PrimaryDatabase gives Prisma (its pg.Pool), without starting a Prisma client. */
  const throughPrismaPool = async (node: NodeRef, sql: string): Promise<void> => {
    const adapter = await primaryAdapter(node, superuser, 2000).connect();
    try {
      await adapter.executeScript(sql);
    } finally {
      await adapter.dispose();
    }
  };

  test.each<[PasswordRequest, string]>([
    ["trust", "session without SCRAM"],
    ["scram-without-proof", "SCRAM without the server's proof"],
  ])(
    "a server that lets Relevo in without proving it knows the password (%s) is refused: it could pass for the member",
    async (request, method) => {
      const fake = await stranger(request);
      const outcome = await outcomeOf(withNodeClient(nodeOn(fake.port), superuser, 2000, () => Promise.resolve("connected")));
      expect(await readNodeFacts(nodeOn(fake.port), superuser, 2000, "strangers")).toBeNull();
      expect((await fake.received()).toString("latin1")).not.toContain(PASSWORD);
      expect(outcome).toEqual(
        expect.objectContaining({
          code: ErrorCode.AuthMethodRefused,
          details: { node: "node2", method },
          message: expect.stringContaining("without proving"),
        }),
      );
    },
  );

  test("a TLS server that does not offer SCRAM with channel binding is refused before the client's first SCRAM message", async () => {
    // Review 14 L7: pg falls back to plain SCRAM when no -PLUS is offered; Relevo's nodes always offer it over TLS.
    const fake = await stranger("scram-without-channel-binding");
    const outcome = await outcomeOf(withNodeClient(nodeOn(fake.port), superuser, 2000, () => Promise.resolve("connected")));
    await expectNothingSent(fake);
    expect(outcome).toEqual(
      expect.objectContaining({ code: ErrorCode.AuthMethodRefused, details: { node: "node2", method: "SCRAM without channel binding" } }),
    );
  });

  describe.each<PasswordRequest>(["cleartext", "md5"])("asked for a %s password", (request) => {
    test("withNodeClient, every short connection's way in (operations, migrations, restores): refused with AUTH_METHOD_REFUSED", async () => {
      const fake = await stranger(request);
      const outcome = await outcomeOf(withNodeClient(nodeOn(fake.port), superuser, 2000, () => Promise.resolve("connected")));
      await expectNothingSent(fake);
      expect(outcome).toEqual(refusal(request));
    });

    test("the topology's observation of a stopped member whose port a stranger took (the collector's prober, `relevo status`)", async () => {
      const fake = await stranger(request);
      const home = await mkdtemp(path.join(os.tmpdir(), "strangers-"));
      const driver = new LocalDriver({
        home,
        pgBinDir: "/usr/lib/postgresql/15/bin",
        pgOsUser: "postgres",
        nodeDirectories: {},
        tls: trustOnlyTlsSource(ca.certificatePem),
      });
      const snapshot = await observeClusterOnce({
        clusterName: "strangers",
        nodes: [nodeOn(fake.port)],
        driver,
        credentials: superuser,
        timeoutMs: 2000,
        lagAlertBytes: 1 << 20,
      }).finally(() => driver.close());
      await expectNothingSent(fake);
      expect(snapshot.nodes[0]).toMatchObject({
        name: "node2",
        reachable: false,
        error: expect.stringContaining("node2's port asked for a"),
      });
    });

    test("the failover monitor's check of the primary and an operation's read of a node's facts", async () => {
      const fake = await stranger(request);
      const checker = new PrimaryChecker({ credentials: superuser, timeoutMs: 2000, clusterName: "strangers" });
      const check = await checker.check(nodeOn(fake.port));
      checker.close();
      const facts = await readNodeFacts(nodeOn(fake.port), superuser, 2000, "strangers");
      await expectNothingSent(fake);
      expect(check).toEqual({ ok: false, error: expect.stringContaining("port asked for a") });
      expect(facts).toBeNull();
    });

    test("the records' Prisma pool (primaryAdapter) and a backup's session", async () => {
      const fake = await stranger(request);
      const query = await outcomeOf(throughPrismaPool(nodeOn(fake.port), "SELECT 1"));
      const session = new BackupSession({ source: nodeOn(fake.port), superuser });
      const connected = await outcomeOf(session.connect()).finally(() => session.end());
      await expectNothingSent(fake);
      expect(String(query)).toMatch(/asked for a/);
      expect(connected).toEqual(refusal(request));
    });
  });
});

describe("PostgreSQL over TLS: a stranger without a certificate of Relevo's CA gets nothing at all", () => {
  test.each<PasswordRequest>(["cleartext", "md5", "scram", "trust"])(
    "one that refuses TLS (asking for %s next) gets no byte past the SSLRequest, and no connection",
    async (request) => {
      const plain = await fakePostgres(request);
      try {
        const outcome = await withNodeClient(nodeOn(plain.port), superuser, 2000, () => Promise.resolve("connected")).catch(
          (error: unknown) => error,
        );
        expect((await plain.received()).length).toBe(0);
        expect(String(outcome)).toMatch(/does not support SSL/);
      } finally {
        await plain.close();
      }
    },
  );

  test("one whose certificate another CA signed fails verify-full before authenticating", async () => {
    const home = await mkdtemp(path.join(os.tmpdir(), "strangers-other-ca-"));
    const other = await CertificateAuthority.load(loadConfig({}, { home }));
    const forged = await other.issueServerCertificate({ commonName: "node2", addresses: ["127.0.0.1"] });
    await rm(home, { recursive: true, force: true });
    const fake = await fakePostgres("cleartext", { tls: { cert: forged.certificatePem, key: forged.keyPem } });
    try {
      const outcome = await withNodeClient(nodeOn(fake.port), superuser, 2000, () => Promise.resolve("connected")).catch(
        (error: unknown) => error,
      );
      expect((await fake.received()).length).toBe(0);
      expect(String(outcome)).toMatch(/self-signed certificate|unable to verify|unable to get local issuer/);
    } finally {
      await fake.close();
    }
  });
});

const asRoot = process.getuid?.() === 0 ? test : test.skip;
const NOBODY = 65534;
const logger = createLogger({ level: "silent" });

describe("Redis: a stranger answering PONG on the embedded Redis's port gets no password", () => {
  // One stranger for both cases (a process of its own, run as nobody); each case reads what it got during it.
  let fake: FakeServer;
  let before = 0;
  beforeAll(async () => {
    if (process.getuid?.() === 0) fake = await fakeServerOfAnotherUser(NOBODY, "redis");
  });
  afterAll(() => fake?.close());
  beforeEach(async () => {
    before = fake ? (await fake.received()).length : 0;
  });
  const receivedDuringTest = async () => (await fake.received()).subarray(before);

  asRoot("Relevo's start refuses to adopt it (REDIS_NOT_OURS) and sends it nothing, AUTH included", async () => {
    const home = await mkdtemp(path.join(os.tmpdir(), "strangers-"));
    const adoption = ensureRedisServer({
      home,
      host: "127.0.0.1",
      port: fake.port,
      password: PASSWORD,
      bin: "redis-server",
      startTimeoutMs: 5000,
      logger,
      tls: await testRedisTls(),
    });
    const outcome = await adoption.then(
      (handle) => handle,
      (error: unknown) => error,
    );
    expect((await receivedDuringTest()).toString()).toBe("");
    expect(outcome).toEqual(
      expect.objectContaining({
        code: ErrorCode.RedisNotOurs,
        message: expect.stringContaining(`it is run by uid ${NOBODY}, not by Relevo's own user`),
      }),
    );
  });

  asRoot("a service's client (reconnecting after its Redis went away, to whatever took the port) sends it nothing", async () => {
    // Over TLS, as every client of Relevo's own Redis: the proof comes before the handshake's first byte.
    const tls = (await testRedisTls()).client;
    const client = createRedisClient({ host: "127.0.0.1", port: fake.port, password: PASSWORD, tls }, { name: "strangers" });
    const errors: Error[] = [];
    client.on("error", (error: Error) => errors.push(error));
    try {
      const pinged = await client.ping().catch((error: Error) => error);
      // The refusal is reported as the client's error (it goes on retrying, as after any failed connection).
      const refused = () => errors.some((error) => (error as RelevoError).code === ErrorCode.RedisNotOurs);
      for (let waited = 0; waited < 3000 && !refused() && pinged !== "PONG"; waited += 20)
        await new Promise((resolve) => setTimeout(resolve, 20));
      expect((await receivedDuringTest()).toString()).toBe("");
      expect(pinged).toBeInstanceOf(Error);
      expect(refused()).toBe(true);
    } finally {
      client.disconnect();
    }
  });
});

describe("the CLI's operator token: a stranger on the API's port (Relevo stopped) gets none", () => {
  // A stranger run as nobody, answering any request with HTTP 200; a data home whose secrets.json is root's (as `relevo up` made it).
  let fake: FakeServer;
  let home: string;
  let before = 0;
  beforeAll(async () => {
    if (process.getuid?.() !== 0) return;
    fake = await fakeServerOfAnotherUser(NOBODY, "http");
    home = await mkdtemp(path.join(os.tmpdir(), "strangers-api-"));
    await loadOrCreateSecrets(home);
  });
  afterAll(async () => {
    await fake?.close();
    if (home) await rm(home, { recursive: true, force: true });
  });
  beforeEach(async () => {
    before = fake ? (await fake.received()).length : 0;
  });
  const receivedDuringTest = async () => (await fake.received()).subarray(before).toString("latin1");
  const createBackup = () =>
    callApi(loadConfig({ RELEVO_HOME: home, RELEVO_API_PORT: String(fake.port) }), "mutation { createBackup(type: FULL) { id } }").then(
      (value) => value,
      (error: unknown) => error,
    );

  asRoot("a command (backup create) is refused with API_NOT_OURS, exit 73, and the stranger gets no byte, no token", async () => {
    const outcome = await createBackup();
    expect(await receivedDuringTest()).toBe("");
    expect(outcome).toEqual(
      expect.objectContaining({
        code: ErrorCode.ApiNotOurs,
        message: expect.stringMatching(/is run by uid 65534, not by a user who can read the data home's secrets.*No token was sent/),
      }),
    );
    expect(exitCodeFor(outcome)).toBe(73);
  });

  asRoot("the same server, run by the owner of secrets.json (who could read the key anyway), gets the request and its token", async () => {
    await chown(secretsFile(home), NOBODY, NOBODY);
    try {
      expect(await createBackup()).toEqual({});
      expect(await receivedDuringTest()).toMatch(/^POST \/graphql HTTP\/1\.1\r\n[\s\S]*authorization: Bearer rlv\.operator\./i);
    } finally {
      await chown(secretsFile(home), 0, 0);
    }
  });
});

describe("the kernel's word on who owns a connection's server end (pure)", () => {
  // /proc/net/tcp and tcp6 as the kernel writes them: a listener, the server's end (uid 65534) and the client's (uid 0).
  const tcp = [
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
    "   0: 0100007F:1A0B 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 1111 1 0 100 0 0 10 0",
    "   1: 0100007F:1A0B 0100007F:D431 01 00000000:00000000 00:00000000 00000000 65534        0 0 1 0 20 4 30 10 -1",
    "   2: 0100007F:D431 0100007F:1A0B 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0 20 4 30 10 -1",
  ].join("\n");
  const tcp6 = [
    "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
    "   0: 00000000000000000000000001000000:1A0C 00000000000000000000000001000000:D432 01 00000000:00000000 00:00000000 00000000     0        0 3 1",
    "   1: 0000000000000000FFFF00000100007F:1A0D 0000000000000000FFFF00000100007F:D433 01 00000000:00000000 00:00000000 00000000   101        0 4 1",
  ].join("\n");
  const rows = parseTcpTable(`${tcp}\n${tcp6}`);

  test("the server's end, not the client's nor the listener, answers for the connection", () => {
    const connection = { client: { address: "127.0.0.1", port: 0xd431 }, server: { address: "127.0.0.1", port: 0x1a0b } };
    expect(serverEndOwner(rows, connection)).toBe(65534);
    expect(serverEndOwner(rows, { client: connection.server, server: connection.client })).toBe(0);
  });

  test("IPv6 loopback and an IPv4 peer of a dual-stack listener are found; an unknown connection is null", () => {
    expect(serverEndOwner(rows, { client: { address: "::1", port: 0xd432 }, server: { address: "::1", port: 0x1a0c } })).toBe(0);
    expect(
      serverEndOwner(rows, { client: { address: "127.0.0.1", port: 0xd433 }, server: { address: "::ffff:127.0.0.1", port: 0x1a0d } }),
    ).toBe(101);
    expect(serverEndOwner(rows, { client: { address: "127.0.0.1", port: 1 }, server: { address: "127.0.0.1", port: 0x1a0b } })).toBeNull();
    expect(canonicalAddress("fe80::1:2")).toBe("fe80:0:0:0:0:0:1:2");
  });

  test("a connection not yet accepted (listed as root's before Linux 6.17) answers by its listener's owner", () => {
    // Review 14: a stranger that accepts late had its connection listed as uid 0, which root trusts.
    const early = parseTcpTable(
      [
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
        "   0: 0100007F:1A0E 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 1111 1 0 100 0 0 10 0",
        "   1: 0100007F:1A0E 0100007F:D434 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1",
        "   2: 00000000:1A0F 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 1112 1 0 100 0 0 10 0",
        "   3: 0100007F:1A0F 0100007F:D435 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1",
        "   4: 0100007F:1A10 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1113 1 0 100 0 0 10 0",
        "   5: 0100007F:1A10 0100007F:D436 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1",
      ].join("\n"),
    );
    const server = (port: number) => ({ address: "127.0.0.1", port });
    expect(serverEndOwner(early, { client: { address: "127.0.0.1", port: 0xd434 }, server: server(0x1a0e) })).toBe(65534);
    // Through a listener on every address.
    expect(serverEndOwner(early, { client: { address: "127.0.0.1", port: 0xd435 }, server: server(0x1a0f) })).toBe(65534);
    // Root's own listener: root's.
    expect(serverEndOwner(early, { client: { address: "127.0.0.1", port: 0xd436 }, server: server(0x1a10) })).toBe(0);
  });
});
