import { expect } from "@jest/globals";
import Redis from "ioredis";
import { readFile, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { loadConfig } from "../../src/config/config";
import { ErrorCode } from "../../src/errors";
import { createLogger } from "../../src/log";
import { connectionOptions } from "../../src/redis/redis-client";
import { ensureRedisServer, type RedisServerHandle } from "../../src/redis/redis-server";
import { ownRedisTls, redisTlsFiles, type OwnRedisTls, type RedisClientTls } from "../../src/redis/redis-tls";
import { CertificateAuthority } from "../../src/tls/certificate-authority";
import { tempHome } from "../helpers/home";
import { pingRedis } from "../helpers/redis-ping";
import { freePort } from "../helpers/ports";
import { testCa, testRedisTls } from "../helpers/tls";
import { joinCertificates } from "../../src/tls/pem-bundle";

/**
 * Relevo's own Redis serves TLS only and asks every client for a
 * certificate of Relevo's CA; every client verifies it. Each case connects
 * as some client would, with the right password, and expects a PONG or a
 * refusal.
 */
describe("Relevo's own Redis over TLS, with client certificates", () => {
  const logger = createLogger({ level: "silent" });
  const password = "redis-tls-test-password-0123";
  let home: string;
  let port: number;
  let server: RedisServerHandle;
  let ownClient: RedisClientTls;
  let stranger: CertificateAuthority;

  /** ensureRedisServer on this file's home and port; `tls` another process's (default: the test CA's). */
  const start = async (tls?: OwnRedisTls): Promise<RedisServerHandle> =>
    ensureRedisServer({
      home,
      host: "127.0.0.1",
      port,
      password,
      bin: "redis-server",
      startTimeoutMs: 30000,
      logger,
      tls: tls ?? (await testRedisTls()),
    });

  /** PING with `tls` (none: plain TCP); the answer, or the error's message. */
  const ping = (tls: RedisClientTls | undefined, options: { proven?: boolean; host?: string } = {}): Promise<string> =>
    pingRedis({ host: options.host ?? "127.0.0.1", port, password, tls, external: !(options.proven ?? true) });

  beforeAll(async () => {
    home = await tempHome("redis-tls");
    port = await freePort();
    ownClient = (await testRedisTls()).client;
    stranger = await CertificateAuthority.load(loadConfig({}, { home: await tempHome("redis-tls-stranger-ca") }));
    server = await start();
  });

  afterAll(async () => {
    await server?.stop();
  });

  test("Relevo's client (its CA's certificate, verifying the server) gets PONG; the server listens on TLS only", async () => {
    expect(await ping(ownClient)).toBe("PONG");
    const client = new Redis({ ...connectionOptions({ host: "127.0.0.1", port, password, tls: ownClient }), lazyConnect: true });
    try {
      await client.connect();
      expect(await client.config("GET", "port")).toEqual(["port", "0"]);
      expect(await client.config("GET", "tls-auth-clients")).toEqual(["tls-auth-clients", "yes"]);
    } finally {
      client.disconnect();
    }
  });

  test("a client without a certificate is refused, though it trusts the CA and knows the password", async () => {
    // TLS 1.3: the server checks the client's certificate after the client's side of the handshake, and resets.
    expect(await ping({ ca: ownClient.ca })).toMatch(/ECONNRESET|certificate required/);
    expect(await ping({ ca: ownClient.ca }, { proven: false })).toMatch(/ECONNRESET|certificate required/);
    // A reset alone could have other causes: Redis's own log names the missing certificate.
    expect(await readFile(path.join(home, "redis", "redis.log"), "utf8")).toMatch(/peer did not return a certificate/);
  });

  test("a plain TCP client is refused", async () => {
    expect(await ping(undefined, { proven: false })).toMatch(/ECONNRESET/);
  });

  test("a client presenting another CA's certificate is refused", async () => {
    const foreign = await stranger.issueClientCertificate({ user: "relevo" });
    // TLS 1.3: the server's alert (unknown ca) races the reset; under load the client may see only the reset.
    expect(await ping({ ca: ownClient.ca, cert: foreign.certificatePem, key: foreign.keyPem })).toMatch(/unknown ca|ECONNRESET/);
  });

  test("a client trusting another CA refuses the server (it sends nothing past the handshake)", async () => {
    const answer = await ping({ ...ownClient, ca: stranger.certificatePem });
    expect(answer).toMatch(/self-signed certificate in certificate chain/);
  });

  test("a start meeting a Redis of ours with another CA's certificates says so (PRECONDITION_FAILED), not PORT_IN_USE", async () => {
    const otherCa = start(await ownRedisTls(stranger));
    await expect(otherCa).rejects.toMatchObject({
      code: ErrorCode.PreconditionFailed,
      message: expect.stringMatching(
        /its TLS handshake with this process failed \((unknown ca|.*certificate.*)\): it runs with certificates of another CA/,
      ),
    });
    expect(await ping(ownClient)).toBe("PONG");
  });

  test("a start that verifies our Redis but holds a client certificate it does not trust says so every time, not PORT_IN_USE", async () => {
    // A process after a CA rotation Redis has not followed: it trusts both CAs, its certificate is of the CA Redis does not know.
    const ownCa = await testCa();
    const issuer = {
      certificatePem: joinCertificates([stranger.certificatePem, ownCa.certificatePem]),
      issueServerCertificate: (options: Parameters<CertificateAuthority["issueServerCertificate"]>[0]) =>
        stranger.issueServerCertificate(options),
      issueClientCertificate: (options: Parameters<CertificateAuthority["issueClientCertificate"]>[0]) =>
        stranger.issueClientCertificate(options),
    };
    const outcomes = new Set<string>();
    for (let attempt = 0; attempt < 12; attempt += 1) {
      outcomes.add(
        await start(await ownRedisTls(issuer)).then(
          () => "started",
          (error: { code?: string }) => error.code ?? "?",
        ),
      );
    }
    expect([...outcomes]).toEqual([ErrorCode.PreconditionFailed]);
    expect(await ping(ownClient)).toBe("PONG");
  });

  test("a client reaching the server under an address its certificate does not name refuses it", async () => {
    // "localhost" is the same server, but its certificate names 127.0.0.1 only.
    expect(await ping(ownClient, { proven: false, host: "localhost" })).toMatch(/altnames/);
  });

  test("its key and certificates are 0600 in a 0700 folder; kept across a restart, issued again when removed", async () => {
    const files = redisTlsFiles(path.join(home, "redis"));
    expect((await stat(path.dirname(files.keyFile))).mode & 0o777).toBe(0o700);
    for (const file of Object.values(files)) expect((await stat(file)).mode & 0o777).toBe(0o600);
    const first = await readFile(files.certificateFile, "utf8");
    expect(await readFile(files.caFile, "utf8")).toBe((await testCa()).certificatePem);

    await server.stop();
    server = await start();
    expect(await readFile(files.certificateFile, "utf8")).toBe(first);

    await server.stop();
    await rm(files.certificateFile);
    server = await start();
    expect(await readFile(files.certificateFile, "utf8")).not.toBe(first);
    expect(await ping(ownClient)).toBe("PONG");
  });

  test("the operator's client certificate in the folder opens a session too", async () => {
    const files = redisTlsFiles(path.join(home, "redis"));
    const tls = { ca: await readFile(files.caFile, "utf8"), cert: await readFile(files.clientCertificateFile, "utf8") };
    expect(await ping({ ...tls, key: await readFile(files.clientKeyFile, "utf8") })).toBe("PONG");
  });
});

describe("a redis-server built without TLS", () => {
  test("the start fails with MISSING_BINARY saying so, not with a bare exit code", async () => {
    const home = await tempHome("redis-no-tls");
    // What a BUILD_TLS=no redis-server 7.0 prints for the first tls-* directive of its configuration file.
    const bin = path.join(home, "redis-server-without-tls");
    await writeFile(
      bin,
      [
        "#!/bin/sh",
        "echo '*** FATAL CONFIG FILE ERROR (Redis 7.0.15) ***' >&2",
        "echo 'Reading the configuration file, at line 4' >&2",
        `echo ">>> 'tls-port 16379'" >&2`,
        "echo 'Bad directive or wrong number of arguments' >&2",
        "exit 1",
        "",
      ].join("\n"),
      { mode: 0o755 },
    );
    const started = ensureRedisServer({
      home,
      host: "127.0.0.1",
      port: await freePort(),
      password: "no-tls-password-0123456",
      bin,
      startTimeoutMs: 10000,
      logger: createLogger({ level: "silent" }),
      tls: await ownRedisTls(await testCa()),
    });
    await expect(started).rejects.toMatchObject({
      code: ErrorCode.MissingBinary,
      message: expect.stringContaining("Redis 7.0.15) was built without TLS") as unknown,
    });
  });
});
