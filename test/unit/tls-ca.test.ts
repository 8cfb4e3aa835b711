import { expect } from "@jest/globals";
import { execFileSync } from "node:child_process";
import { X509Certificate, createPrivateKey } from "node:crypto";
import { chmod, chown, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { loadConfig } from "../../src/config/config";
import { handshake } from "../helpers/tls-handshake";
import { ErrorCode } from "../../src/errors";
import { CertificateAuthority, caFiles } from "../../src/tls/certificate-authority";
import { certificateFacts } from "../../src/tls/issued-certificates";
import {
  LEAF_VALIDITY_DAYS,
  clientCertificateRequest,
  randomSerialNumber,
  serverCertificateRequest,
  subjectAltNamesFor,
} from "../../src/tls/certificate-requests";

const DAY_MS = 86_400_000;

describe("what a certificate carries (pure)", () => {
  test("IP addresses become iPAddress entries, host names dNSName ones, each once", () => {
    expect(subjectAltNamesFor(["127.0.0.1", "::1", "Node1.Example.org.", "localhost", "127.0.0.1", "node1.example.org"])).toEqual([
      { type: "ip", value: "127.0.0.1" },
      { type: "ip", value: "::1" },
      { type: "dns", value: "node1.example.org" },
      { type: "dns", value: "localhost" },
    ]);
  });

  test.each(["", "a b", "host,DNS:evil", "-leading.example", "127.0.0.1/32"])("%j is no address: BAD_USER_INPUT", (address) => {
    expect(() => subjectAltNamesFor([address])).toThrow(expect.objectContaining({ code: ErrorCode.BadUserInput }));
  });

  test("a server certificate needs an address; a common name cannot add attributes", () => {
    const now = new Date();
    expect(() => serverCertificateRequest({ commonName: "node1", addresses: [], now })).toThrow(
      expect.objectContaining({ code: ErrorCode.BadUserInput }),
    );
    expect(() => clientCertificateRequest({ user: "replicator,O=evil", now })).toThrow(
      expect.objectContaining({ code: ErrorCode.BadUserInput }),
    );
  });

  test("leaf validity is about a year from a little before now; serials are positive and differ", () => {
    const now = new Date("2026-01-01T00:00:00Z");
    const request = serverCertificateRequest({ commonName: "node1", addresses: ["127.0.0.1"], now });
    expect(request.notBefore.getTime()).toBeLessThan(now.getTime());
    expect(request.notAfter.getTime()).toBe(now.getTime() + LEAF_VALIDITY_DAYS * DAY_MS);
    const serials = new Set(Array.from({ length: 50 }, () => randomSerialNumber()));
    expect(serials.size).toBe(50);
    for (const serial of serials) expect(parseInt(serial.slice(0, 2), 16)).toBeLessThan(0x80);
    expect(randomSerialNumber(() => Buffer.alloc(16, 0xff))).toMatch(/^7f/);
  });
});

describe("Relevo's CA", () => {
  let home: string;
  beforeEach(async () => {
    home = await mkdtemp(path.join(os.tmpdir(), "relevo-tls-"));
  });
  afterEach(async () => {
    await rm(home, { recursive: true, force: true });
  });
  const settings = (extra: Record<string, string> = {}) => loadConfig({ RELEVO_HOME: home, ...extra });

  test("an own CA that expired is refused at load, saying which files to remove; the other CA stays", async () => {
    const sixYearsAgo = new Date(Date.now() - 6 * 365 * 86_400_000);
    // Both CAs made six years ago; the services CA then replaced by a valid one.
    await CertificateAuthority.load(settings(), { clock: () => sixYearsAgo });
    const tlsDirectory = path.join(home, "tls");
    await rm(path.join(tlsDirectory, "services-ca.crt"));
    await rm(path.join(tlsDirectory, "services-ca.key"));
    const services = await CertificateAuthority.load(settings(), { role: "services" });
    await expect(CertificateAuthority.load(settings())).rejects.toMatchObject({
      code: ErrorCode.TlsCaInvalid,
      details: { file: path.join(tlsDirectory, "ca.crt") },
      message: expect.stringMatching(
        /expired on .*: remove ca\.crt, ca\.key, rotation\.json from .*tls \(the last if present\), and the next start makes a new nodes' CA.*need the new ca\.crt/,
      ),
    });
    // Done as said: a new nodes' CA; the services CA (still valid) is the same.
    await rm(path.join(tlsDirectory, "ca.crt"));
    await rm(path.join(tlsDirectory, "ca.key"));
    const renewed = await CertificateAuthority.load(settings());
    expect(renewed.notAfter.getTime()).toBeGreaterThan(Date.now() + 4 * 365 * 86_400_000);
    expect((await CertificateAuthority.load(settings(), { role: "services" })).certificatePem).toBe(services.certificatePem);
  });

  test("an expired services CA names its own files and its own clients", async () => {
    const sixYearsAgo = new Date(Date.now() - 6 * 365 * 86_400_000);
    await CertificateAuthority.load(settings(), { role: "services", clock: () => sixYearsAgo });
    await expect(CertificateAuthority.load(settings(), { role: "services" })).rejects.toMatchObject({
      code: ErrorCode.TlsCaInvalid,
      message: expect.stringMatching(
        /remove services-ca\.crt, services-ca\.key, services-rotation\.json from .*new services CA.*clients of the API and of Redis then need the new services-ca\.crt/,
      ),
    });
  });

  test("a CA that is not valid yet (a clock behind), or whose keyUsage forbids signing certificates, is refused", async () => {
    const inAWeek = new Date(Date.now() + 7 * 86_400_000);
    await CertificateAuthority.load(settings(), { clock: () => inAWeek });
    await expect(CertificateAuthority.load(settings())).rejects.toMatchObject({
      code: ErrorCode.TlsCaInvalid,
      message: expect.stringContaining("is not valid before"),
    });
    const directory = path.join(home, "no-cert-sign");
    await mkdir(directory);
    const certificateFile = path.join(directory, "ca.crt");
    const keyFile = path.join(directory, "ca.key");
    execFileSync("openssl", [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", keyFile, "-out", certificateFile,
      "-days", "30", "-subj", "/CN=no cert sign", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,digitalSignature",
    ], { stdio: "ignore" }); // prettier-ignore
    await chmod(keyFile, 0o600);
    await expect(
      CertificateAuthority.load(settings({ RELEVO_TLS_CA_FILE: certificateFile, RELEVO_TLS_CA_KEY_FILE: keyFile })),
    ).rejects.toMatchObject({ code: ErrorCode.TlsCaInvalid, message: expect.stringContaining("lacks keyCertSign") });
  });

  test("is made once in the data home, its key 0600, and read back by every later load (two at once included)", async () => {
    const [first, second] = await Promise.all([CertificateAuthority.load(settings()), CertificateAuthority.load(settings())]);
    expect(first.certificatePem).toBe(second.certificatePem);
    const files = caFiles(settings());
    expect(first.certificateFile).toBe(files.certificateFile);
    expect(files.certificateFile).toBe(path.join(home, "tls", "ca.crt"));
    expect((await stat(files.keyFile)).mode & 0o777).toBe(0o600);
    expect((await stat(files.certificateFile)).mode & 0o777).toBe(0o644);
    expect((await stat(path.dirname(files.keyFile))).mode & 0o777).toBe(0o711);
    const again = await CertificateAuthority.load(settings());
    expect(again.certificatePem).toBe(first.certificatePem);
    const ca = new X509Certificate(first.certificatePem);
    expect(ca.ca).toBe(true);
    expect(createPrivateKey(await readFile(files.keyFile)).asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    expect(new Date(ca.validTo).getTime() - Date.now()).toBeGreaterThan(4 * 365 * DAY_MS);
  });

  test("a server certificate names its IP addresses and host names and passes a verify-full TLS handshake", async () => {
    const ca = await CertificateAuthority.load(settings());
    const server = await ca.issueServerCertificate({ commonName: "node1", addresses: ["127.0.0.1", "localhost"] });
    const certificate = new X509Certificate(server.certificatePem);
    expect(certificate.subjectAltName).toBe("IP Address:127.0.0.1, DNS:localhost");
    expect(certificate.verify(new X509Certificate(ca.certificatePem).publicKey)).toBe(true);
    expect(certificate.ca).toBe(false);
    expect(certificate.checkPrivateKey(createPrivateKey(server.keyPem))).toBe(true);

    // Node's checkServerIdentity matches an IP address against iPAddress entries only, as libpq 15 does.
    expect(await handshake(server, ca.certificatePem, "127.0.0.1")).toBe("verified");
    expect(await handshake(server, ca.certificatePem, "localhost")).toBe("verified");
    const other = await CertificateAuthority.load(loadConfig({ RELEVO_HOME: path.join(home, "other") }));
    expect(await handshake(server, other.certificatePem, "127.0.0.1")).toMatch(/self-signed|unable to verify|local issuer/i);
    const elsewhere = await ca.issueServerCertificate({ commonName: "node2", addresses: ["127.0.0.2"] });
    expect(await handshake(elsewhere, ca.certificatePem, "127.0.0.1")).toMatch(/IP: 127.0.0.1 is not in the cert's list/);
  });

  test("a client certificate's CN is the user", async () => {
    const ca = await CertificateAuthority.load(settings());
    const client = await ca.issueClientCertificate({ user: "replicator" });
    const certificate = new X509Certificate(client.certificatePem);
    expect(certificate.subject).toBe("CN=replicator");
    expect(certificate.keyUsage).toEqual(["1.3.6.1.5.5.7.3.2"]); // clientAuth
    expect(certificate.subjectAltName).toBeUndefined();
  });

  test.each([
    ["EC P-256", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]],
    ["RSA", ["-newkey", "rsa:2048"]],
  ])("a CA of one's own (%s, made with openssl) issues certificates that verify against it", async (_kind, keyArgs) => {
    const { certificateFile, keyFile } = opensslCa(home, keyArgs);
    const config = settings({ RELEVO_TLS_CA_FILE: certificateFile, RELEVO_TLS_CA_KEY_FILE: keyFile });
    const ca = await CertificateAuthority.load(config);
    expect(ca.certificateFile).toBe(certificateFile);
    const server = await ca.issueServerCertificate({ commonName: "node1", addresses: ["127.0.0.1"] });
    expect(await handshake(server, await readFile(certificateFile, "utf8"), "127.0.0.1")).toBe("verified");
    await expect(stat(path.join(home, "tls"))).rejects.toMatchObject({ code: "ENOENT" }); // no CA of Relevo's made beside it
  });

  test("a CA of one's own that cannot sign is refused with a code, naming what is wrong", async () => {
    const first = opensslCa(path.join(home, "a"), ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    const second = opensslCa(path.join(home, "b"), ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    const load = (certificateFile: string, keyFile: string) =>
      CertificateAuthority.load(settings({ RELEVO_TLS_CA_FILE: certificateFile, RELEVO_TLS_CA_KEY_FILE: keyFile }));
    await expect(load(first.certificateFile, second.keyFile)).rejects.toMatchObject({
      code: ErrorCode.TlsCaInvalid,
      message: expect.stringContaining("is not the key of"),
    });
    const ours = await CertificateAuthority.load(settings());
    const leaf = await ours.issueServerCertificate({ commonName: "node1", addresses: ["127.0.0.1"] });
    await writeFile(path.join(home, "leaf.crt"), leaf.certificatePem);
    await writeFile(path.join(home, "leaf.key"), leaf.keyPem, { mode: 0o600 });
    await expect(load(path.join(home, "leaf.crt"), path.join(home, "leaf.key"))).rejects.toMatchObject({
      code: ErrorCode.TlsCaInvalid,
      message: expect.stringContaining("not a CA certificate"),
    });
    // A key its group or others may read is refused, as ssh refuses one (review 14).
    await chmod(first.keyFile, 0o640);
    await expect(load(first.certificateFile, first.keyFile)).rejects.toMatchObject({
      code: ErrorCode.TlsCaInvalid,
      message: expect.stringContaining("chmod 600"),
    });
    await chmod(first.keyFile, 0o600);
    // A trust file others may write (whoever appends a CA is trusted), or a key another user owns, is refused too.
    await chmod(first.certificateFile, 0o666);
    await expect(load(first.certificateFile, first.keyFile)).rejects.toMatchObject({
      code: ErrorCode.TlsCaInvalid,
      message: expect.stringContaining("chmod go-w"),
    });
    await chmod(first.certificateFile, 0o644);
    await chown(first.keyFile, 65534, 65534);
    await expect(load(first.certificateFile, first.keyFile)).rejects.toMatchObject({
      code: ErrorCode.TlsCaInvalid,
      message: expect.stringContaining("owned by uid 65534"),
    });
    await chown(first.keyFile, 0, 0);
    await expect(load(path.join(home, "missing.crt"), first.keyFile)).rejects.toMatchObject({
      code: ErrorCode.InvalidConfig,
      message: expect.stringContaining("RELEVO_TLS_CA_FILE"),
    });
  });

  test("the services CA is made beside the nodes' one (its key 0600), and neither verifies the other's leaves", async () => {
    const [nodes, services] = await Promise.all([
      CertificateAuthority.load(settings()),
      CertificateAuthority.load(settings(), { role: "services" }),
    ]);
    const files = caFiles(settings(), "services");
    expect(services.certificateFile).toBe(path.join(home, "tls", "services-ca.crt"));
    expect((await stat(files.keyFile)).mode & 0o777).toBe(0o600);
    expect((await stat(files.certificateFile)).mode & 0o777).toBe(0o644);
    expect(certificateFacts(services.signerPem).subject).toBe("CN=Relevo services CA relevo");
    expect(services.signerPem).not.toBe(nodes.signerPem);
    expect((await CertificateAuthority.load(settings(), { role: "services" })).signerPem).toBe(services.signerPem);
    const node = await nodes.issueServerCertificate({ commonName: "node1", addresses: ["127.0.0.1"] });
    const api = await services.issueServerCertificate({ commonName: "api", addresses: ["127.0.0.1"] });
    expect(await handshake(node, services.certificatePem, "127.0.0.1")).toMatch(/unable to verify the first certificate/);
    expect(await handshake(api, nodes.certificatePem, "127.0.0.1")).toMatch(/unable to verify the first certificate/);
    expect(await handshake(api, services.certificatePem, "127.0.0.1")).toBe("verified");
  });

  test("a data home from before the services CA gets one at its next load, the same one for two loads at once", async () => {
    const nodes = await CertificateAuthority.load(settings());
    const files = caFiles(settings(), "services");
    await rm(files.certificateFile);
    await rm(files.keyFile);
    const [first, second] = await Promise.all([
      CertificateAuthority.load(settings(), { role: "services" }),
      CertificateAuthority.load(settings(), { role: "services" }),
    ]);
    expect(first.signerPem).toBe(second.signerPem);
    const leaf = await second.issueServerCertificate({ commonName: "api", addresses: ["127.0.0.1"] });
    expect(await handshake(leaf, first.certificatePem, "127.0.0.1")).toBe("verified");
    expect((await stat(files.keyFile)).mode & 0o777).toBe(0o600);
    // The nodes' CA is untouched, and no temporary is left beside the files.
    expect((await CertificateAuthority.load(settings())).signerPem).toBe(nodes.signerPem);
    expect((await readdir(path.dirname(files.keyFile))).sort()).toEqual(["ca.crt", "ca.key", "services-ca.crt", "services-ca.key"]);
  });

  test("with RELEVO_TLS_CA_FILE, the services CA is still Relevo's own, made alone in the data home", async () => {
    const { certificateFile, keyFile } = opensslCa(path.join(home, "operator"), ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    const config = settings({ RELEVO_TLS_CA_FILE: certificateFile, RELEVO_TLS_CA_KEY_FILE: keyFile });
    const services = await CertificateAuthority.load(config, { role: "services" });
    expect(services.configured).toBe(false);
    expect(services.certificateFile).toBe(path.join(home, "tls", "services-ca.crt"));
    expect(services.signerPem).not.toBe(await readFile(certificateFile, "utf8"));
    expect((await readdir(path.join(home, "tls"))).sort()).toEqual(["services-ca.crt", "services-ca.key"]);
  });

  test("a services CA key left without its certificate (a start interrupted) is reported, never paired with a new certificate", async () => {
    await CertificateAuthority.load(settings());
    const files = caFiles(settings(), "services");
    await rm(files.certificateFile);
    const key = await readFile(files.keyFile, "utf8");
    // A clock a second further at each look: the load waits out its 10 s for the certificate at once.
    let now = Date.now();
    const clock = () => new Date((now += 1000));
    await expect(CertificateAuthority.load(settings(), { role: "services", clock })).rejects.toMatchObject({
      code: ErrorCode.TlsCaInvalid,
      message: expect.stringContaining(`remove ${files.keyFile}`),
    });
    expect(await readFile(files.keyFile, "utf8")).toBe(key);
    await expect(stat(files.certificateFile)).rejects.toMatchObject({ code: "ENOENT" });
  });

  test("a CA file without its key (or the reverse) is INVALID_CONFIG naming the empty one", () => {
    expect(() => loadConfig({ RELEVO_TLS_CA_FILE: "/ca.crt" })).toThrow(
      expect.objectContaining({ code: ErrorCode.InvalidConfig, message: expect.stringContaining("RELEVO_TLS_CA_KEY_FILE is empty") }),
    );
    expect(() => loadConfig({ RELEVO_TLS_CA_KEY_FILE: "/ca.key" })).toThrow(
      expect.objectContaining({ code: ErrorCode.InvalidConfig, message: expect.stringContaining("RELEVO_TLS_CA_FILE is empty") }),
    );
    expect(loadConfig({ RELEVO_TLS_CA_FILE: "ca.crt", RELEVO_TLS_CA_KEY_FILE: "ca.key" }).tlsCaFile).toBe(path.resolve("ca.crt"));
  });
});

/** An operator's CA, made as the docs say (openssl req -x509 marks it CA:TRUE). */
function opensslCa(directory: string, keyArgs: string[]): { certificateFile: string; keyFile: string } {
  execFileSync("mkdir", ["-p", directory]);
  const certificateFile = path.join(directory, "ca.crt");
  const keyFile = path.join(directory, "ca.key");
  execFileSync(
    "openssl",
    ["req", "-x509", ...keyArgs, "-nodes", "-days", "30", "-subj", "/CN=Operator CA", "-keyout", keyFile, "-out", certificateFile],
    {
      stdio: "ignore",
    },
  );
  return { certificateFile, keyFile };
}
