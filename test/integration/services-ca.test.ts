import { execFile } from "node:child_process";
import { once } from "node:events";
import { readFile, writeFile } from "node:fs/promises";
import https from "node:https";
import path from "node:path";
import tls from "node:tls";
import { promisify } from "node:util";
import { callApi } from "../../src/cli/api-client";
import type { RelevoConfig } from "../../src/config/config";
import { ErrorCode } from "../../src/errors";
import { withClusterRedis } from "../../src/cli/cluster-redis";
import { createLogger } from "../../src/log";
import { ensureRedisServer } from "../../src/redis/redis-server";
import { ensureRedisServerCertificate, ownRedisTls, redisTlsFiles } from "../../src/redis/redis-tls";
import { loadOrCreateSecrets, readSecrets } from "../../src/secrets/secrets-store";
import { CertificateAuthority, caFiles, type IssuedCertificate } from "../../src/tls/certificate-authority";
import { testConfig } from "../helpers/service";
import { tempHome } from "../helpers/home";
import { pingRedis } from "../helpers/redis-ping";
import { loadConfig } from "../../src/config/config";

const execFileAsync = promisify(execFile);

/**
 * Review 15, H1: the PostgreSQL OS user reads its node's key, so a node's
 * certificate must never be one that a client of the API or of Relevo's
 * Redis accepts. Such a user could otherwise serve the API's port (or
 * Redis's) while the service is down and collect bearer tokens (or Redis's
 * password). Each case puts a server with a node's certificate on the port
 * and connects as the CLI, as Relevo's own processes and as the docs tell
 * other clients to (`--cacert $RELEVO_HOME/tls/services-ca.crt`). The same
 * server with a services CA certificate is the control: it shows the
 * refusal comes from the certificate and nothing else.
 */
describe("the services CA: a node's certificate cannot pose as the API or Redis", () => {
  const token = "rlv.operator.SECRET-TOKEN";
  const password = "services-ca-redis-password-0123";
  const logger = createLogger({ level: "silent" });
  let config: RelevoConfig;
  let nodesCa: CertificateAuthority;
  let servicesCa: CertificateAuthority;
  let servicesCaFile: string;
  let nodeCertificate: IssuedCertificate;

  beforeAll(async () => {
    config = await testConfig("services-ca", { apiTls: "on", host: "127.0.0.1" });
    await loadOrCreateSecrets(config.home);
    nodesCa = await CertificateAuthority.load(config);
    servicesCa = await CertificateAuthority.load(config, { role: "services" });
    servicesCaFile = caFiles(config, "services").certificateFile;
    expect(servicesCaFile).toBe(path.join(config.home, "tls", "services-ca.crt"));
    // What the PostgreSQL OS user holds: a node's certificate and key, of the nodes' CA, for the host's address.
    nodeCertificate = await nodesCa.issueServerCertificate({ commonName: "node1", addresses: ["127.0.0.1"] });
  });

  describe("the API's port", () => {
    /** An HTTPS server on the API's port with `certificate`; what it was sent as Authorization. */
    const withHttpsServer = async <T>(certificate: IssuedCertificate, work: (seen: string[]) => Promise<T>): Promise<T> => {
      const seen: string[] = [];
      const server = https.createServer({ cert: certificate.certificatePem, key: certificate.keyPem }, (request, response) => {
        seen.push(request.headers.authorization ?? "(none)");
        request.resume();
        response.setHeader("content-type", "application/json");
        response.end(JSON.stringify({ data: { __typename: "Query" } }));
      });
      server.listen(config.apiPort, "127.0.0.1");
      await once(server, "listening");
      try {
        return await work(seen);
      } finally {
        server.closeAllConnections();
        server.close();
      }
    };

    /** curl as docs/security.md shows it: the services CA, a bearer token. Its exit status and stderr, or "ok". */
    const curl = async (): Promise<string> =>
      execFileAsync("curl", [
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        servicesCaFile,
        "-H",
        `authorization: Bearer ${token}`,
        "-H",
        "content-type: application/json",
        "-d",
        '{"query":"{ __typename }"}',
        `https://127.0.0.1:${config.apiPort}/graphql`,
      ]).then(
        // prettier-ignore
        () => "ok",
        (error: Error & { code?: number; stderr?: string }) => `exit ${error.code}: ${error.stderr ?? ""}`,
      );

    /** A Node client trusting the services CA alone; "ok" or its error. */
    const nodeClient = (): Promise<string> =>
      new Promise((resolve) => {
        const request = https.request(
          {
            host: "127.0.0.1",
            port: config.apiPort,
            path: "/graphql",
            method: "POST",
            ca: servicesCa.certificatePem,
            headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          },
          (response) => {
            response.resume();
            response.on("end", () => resolve("ok"));
          },
        );
        request.on("error", (error) => resolve(error.message));
        request.end('{"query":"{ __typename }"}');
      });

    test("a server with a node's certificate is refused by the CLI, by curl --cacert services-ca.crt and by Node; no token reaches it", async () => {
      await withHttpsServer(nodeCertificate, async (seen) => {
        const refused = await callApi(config, "{ __typename }").then(
          () => null,
          (error: Error & { code?: string }) => error,
        );
        expect(refused).toMatchObject({ code: ErrorCode.ServiceUnavailable });
        expect((refused?.cause as Error | undefined)?.message).toMatch(/unable to verify the first certificate/);
        expect(await curl()).toMatch(/^exit 60: .*SSL certificate problem: unable to get local issuer certificate/s);
        expect(await nodeClient()).toMatch(/unable to verify the first certificate/);
        expect(seen).toEqual([]);
      });
    });

    test("control: the same server with a certificate of the services CA is trusted by all three", async () => {
      const apiCertificate = await servicesCa.issueServerCertificate({ commonName: "api", addresses: ["127.0.0.1"] });
      await withHttpsServer(apiCertificate, async (seen) => {
        expect(await callApi(config, "{ __typename }")).toEqual({ __typename: "Query" });
        expect(await curl()).toBe("ok");
        expect(await nodeClient()).toBe("ok");
        // The CLI's own token (minted from the home's key), then the test's, twice.
        expect(seen).toHaveLength(3);
        expect(seen.slice(1)).toEqual([`Bearer ${token}`, `Bearer ${token}`]);
      });
    });
    test("the operator's own API certificate (a private CA): the CLI pins it; a sibling of that CA in its place is refused", async () => {
      // A company CA that is in no root store, which may also be RELEVO_TLS_CA_FILE and so sign the nodes' certificates.
      const company = await CertificateAuthority.load(loadConfig({}, { home: await tempHome("company-ca") }));
      const apiCertificate = await company.issueServerCertificate({ commonName: "api", addresses: ["127.0.0.1"] });
      const files = await tempHome("operator-api-files");
      const certificateFile = path.join(files, "api.crt");
      const keyFile = path.join(files, "api.key");
      await writeFile(certificateFile, apiCertificate.certificatePem, { mode: 0o644 });
      await writeFile(keyFile, apiCertificate.keyPem, { mode: 0o600 });
      const operatorConfig: RelevoConfig = { ...config, apiTlsCertFile: certificateFile, apiTlsKeyFile: keyFile };
      await withHttpsServer(apiCertificate, async () => {
        expect(await callApi(operatorConfig, "{ __typename }")).toEqual({ __typename: "Query" });
      });
      const sibling = await company.issueServerCertificate({ commonName: "node1", addresses: ["127.0.0.1"] });
      await withHttpsServer(sibling, async (seen) => {
        await expect(callApi(operatorConfig, "{ __typename }")).rejects.toMatchObject({ code: ErrorCode.ServiceUnavailable });
        expect(seen).toEqual([]);
      });
    });
  });

  describe("Redis's port", () => {
    beforeAll(async () => {
      // The files an operator's redis-cli is given (redis/tls/client.crt and client.key), as a start writes them.
      await ensureRedisServerCertificate({ redisDirectory: path.join(config.home, "redis"), issuer: servicesCa, addresses: ["127.0.0.1"] });
    });

    /** A TLS server on Redis's port with `certificate`, asking for a client certificate as Redis does; what it was sent. */
    const withTlsServer = async <T>(certificate: IssuedCertificate, work: (received: () => string) => Promise<T>): Promise<T> => {
      const chunks: Buffer[] = [];
      const sockets = new Set<tls.TLSSocket>();
      const server = tls.createServer({
        cert: certificate.certificatePem,
        key: certificate.keyPem,
        requestCert: true,
        rejectUnauthorized: false,
      });
      server.on("secureConnection", (socket) => {
        sockets.add(socket);
        socket.on("data", (chunk: Buffer) => {
          chunks.push(chunk);
          // Each command (RESP: an array whose first bulk string is its name) answered as Redis would, enough for a PING.
          for (const [, name] of chunk.toString("utf8").matchAll(/\*\d+\r\n\$\d+\r\n(\w+)\r\n/g)) {
            socket.write(name!.toUpperCase() === "PING" ? "+PONG\r\n" : "+OK\r\n");
          }
        });
        socket.on("error", () => undefined);
      });
      server.on("tlsClientError", () => undefined);
      server.listen(config.redisPort, "127.0.0.1");
      await once(server, "listening");
      try {
        return await work(() => Buffer.concat(chunks).toString("utf8"));
      } finally {
        for (const socket of sockets) socket.destroy();
        server.close();
      }
    };

    /**
     * A CLI command that reaches the cluster's Redis (withClusterRedis: a client certificate issued from the data
     * home's CA, the server proven and verified, then AUTH), as the service's own start does; PING's answer, or the
     * refusal (what answers is then taken for a stranger holding the port).
     */
    const relevoClient = async (): Promise<string> => {
      const secrets = { ...(await readSecrets(config.home)), redisPassword: password };
      return withClusterRedis(config, secrets, logger, (redis) => redis.ping()).catch((error: Error) => `refused: ${error.message}`);
    };

    /** redis-cli as docs/security.md shows it; its output and errors. */
    const redisCli = async (): Promise<string> => {
      const files = redisTlsFiles(path.join(config.home, "redis"));
      const args = [
        "--tls", "--cacert", servicesCaFile, "--cert", files.clientCertificateFile, "--key", files.clientKeyFile,
        "-h", "127.0.0.1", "-p", String(config.redisPort), "--no-auth-warning", "-a", password, "PING",
      ]; // prettier-ignore
      return execFileAsync("redis-cli", args, { timeout: 10_000 }).then(
        ({ stdout, stderr }) => `${stdout}${stderr}`,
        (error: Error & { stdout?: string; stderr?: string }) => `${error.stdout ?? ""}${error.stderr ?? ""}${error.message}`,
      );
    };

    test("a server with a node's certificate is refused by Relevo's Redis client and by redis-cli; the password never reaches it", async () => {
      await withTlsServer(nodeCertificate, async (received) => {
        // Refused for the certificate: what answers on the port is not verified as Relevo's Redis.
        expect(await relevoClient()).toMatch(/^refused: .*(unable to verify the first certificate|unable to get local issuer)/);
        expect(await redisCli()).toMatch(/certificate verify failed/);
        expect(received()).toBe("");
      });
    });

    test("control: the same server with a certificate of the services CA gets both clients' AUTH", async () => {
      const redisCertificate = await servicesCa.issueServerCertificate({ commonName: "redis", addresses: ["127.0.0.1"] });
      await withTlsServer(redisCertificate, async (received) => {
        // Each verified the server and sent its AUTH with the password, then its PING.
        expect(await relevoClient()).toBe("PONG");
        expect((await redisCli()).trim()).toBe("PONG");
        // The command's probe and its client, then redis-cli: each AUTH carries the password.
        expect(received().match(/\bauth\b/gi)).toHaveLength(3);
        expect(received()).toContain(password);
      });
    });
  });

  test("the real Redis, as a start makes it, admits a client certificate of the services CA and refuses one of the nodes' CA", async () => {
    const server = await ensureRedisServer({
      home: config.home,
      host: "127.0.0.1",
      port: config.redisPort,
      password,
      bin: "redis-server",
      startTimeoutMs: 30_000,
      logger,
      tls: await ownRedisTls(servicesCa),
    });
    /** PING as a client presenting `certificate` and verifying the server against the services CA; the answer or the error. */
    const ping = (certificate: IssuedCertificate): Promise<string> =>
      pingRedis({
        host: "127.0.0.1",
        port: config.redisPort,
        password,
        tls: { ca: servicesCa.certificatePem, cert: certificate.certificatePem, key: certificate.keyPem },
        external: false,
      });
    try {
      expect(await ping(await servicesCa.issueClientCertificate({ user: "relevo" }))).toBe("PONG");
      // What the PostgreSQL OS user could get issued (a client certificate of the nodes' CA) is not admitted: TLS 1.3's
      // alert (unknown ca) races the reset, so the client may see either; Redis's log names the reason.
      expect(await ping(await nodesCa.issueClientCertificate({ user: "relevo" }))).toMatch(/unknown ca|ECONNRESET/);
      const log = await readFile(path.join(config.home, "redis", "redis.log"), "utf8");
      expect(log).toMatch(/certificate verify failed|unknown ca/i);
    } finally {
      await server.stop();
    }
  });

  test("the services CA and the nodes' are two: neither file holds the other's certificate", async () => {
    expect(await readFile(servicesCaFile, "utf8")).toBe(servicesCa.certificatePem);
    expect(servicesCa.certificatePem).not.toContain(nodesCa.signerPem.trim());
    expect(nodesCa.certificatePem).not.toContain(servicesCa.signerPem.trim());
  });
});
