import { execFile } from "node:child_process";
import { readFile, readdir } from "node:fs/promises";
import path from "node:path";
import { connect as tlsConnect, type ConnectionOptions, type PeerCertificate, type TLSSocket } from "node:tls";
import { promisify } from "node:util";
import { Client } from "pg";
import { loadConfig } from "../../src/config/config";
import { DockerDriver } from "../../src/nodes/docker/docker-driver";
import type { NodeDriver, NodeRef, NodeTlsPaths, NodeTlsSource } from "../../src/nodes/node-driver";
import { CertificateAuthority } from "../../src/tls/certificate-authority";
import { nodeTlsSource } from "../../src/tls/node-tls";
import { ownRedisTls, type OwnRedisTls } from "../../src/redis/redis-tls";
import { tempHome } from "./home";

/** Where the CAs of a test file's clusters are listed (one module registry per file): the nodes', and apart the services'. */
const TRUST_KEY = "__relevoTestTrustedCas";
const SERVICES_TRUST_KEY = "__relevoTestTrustedServicesCas";
const CA_KEY = "__relevoTestCa";

function registry(key: string = TRUST_KEY): string[] {
  const global = globalThis as unknown as Record<string, string[] | undefined>;
  return (global[key] ??= []);
}

/** Trusts `caPem` (a test cluster's nodes' CA) in this file's test clients of the nodes from now on. */
export function trustCa(caPem: string): void {
  if (!registry().includes(caPem)) registry().push(caPem);
}

/** Trusts `caPem` (a test cluster's services CA) in this file's test clients of the API from now on. */
export function trustServicesCa(caPem: string): void {
  if (!registry(SERVICES_TRUST_KEY).includes(caPem)) registry(SERVICES_TRUST_KEY).push(caPem);
}

/** What a test's client of an HTTPS API trusts: the services CAs of this file's clusters, as the CLI does (never a nodes' CA). */
export function testApiClientCas(): string[] {
  return [...registry(SERVICES_TRUST_KEY)];
}

/**
 * TLS for a test's own pg clients: verify-full, as Relevo's own clients do
 * (the chain against the CAs of this file's clusters, the certificate
 * against the host), since nodes admit TLS connections only.
 */
export function testClientSsl(): ConnectionOptions {
  return { ca: [...registry()], rejectUnauthorized: true };
}

/** A CA of the test file's own, made once in a temporary home, and trusted by the file's test clients. */
export function testCa(): Promise<CertificateAuthority> {
  const global = globalThis as unknown as Record<string, Promise<CertificateAuthority> | undefined>;
  return (global[CA_KEY] ??= (async () => {
    const ca = await CertificateAuthority.load(loadConfig({}, { home: await tempHome("test-ca") }));
    trustCa(ca.certificatePem);
    return ca;
  })());
}

/** The key a node's server runs with, read where its driver put it (the container's file system on Docker). */
export function nodeServerKey(driver: NodeDriver, clusterName: string, node: NodeRef): Promise<string> {
  return nodeTlsFile(driver, clusterName, node, "key");
}

/** One of a node's TLS files (see NodeDriver.tlsPaths), read where its driver put it. */
export async function nodeTlsFile(driver: NodeDriver, clusterName: string, node: NodeRef, which: keyof NodeTlsPaths): Promise<string> {
  const file = driver.tlsPaths(node)[which];
  if (driver.kind === "local") return readFile(file, "utf8");
  const container = DockerDriver.namesOf(clusterName, node.name).container;
  return (await promisify(execFile)("docker", ["exec", container, "cat", file])).stdout;
}

/** The certificate `node` presents to a TLS client (verify-full against this file's CAs). */
export async function servedCertificate(node: NodeRef, password: string): Promise<PeerCertificate> {
  const client = new Client({ host: node.host, port: node.port, user: "postgres", password, database: "postgres", ssl: testClientSsl() });
  await client.connect();
  try {
    return (client as unknown as { connection: { stream: TLSSocket } }).connection.stream.getPeerCertificate();
  } finally {
    await client.end();
  }
}

/** Every regular file below `directory` whose bytes hold `needle` (paths relative to it). */
export async function filesHolding(directory: string, needle: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir(directory, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const file = path.join(entry.parentPath, entry.name);
    if ((await readFile(file)).includes(needle)) found.push(path.relative(directory, file));
  }
  return found;
}

/** The body of a PEM key (its base64, on one line): what would be found of it in a copy. */
export function pemBodyLine(pem: string): string {
  return pem.split("\n").find((line) => line.length > 0 && !line.startsWith("-----"))!;
}

/** The test file's CA as the nodes' certificate source of a driver a test builds. */
export async function testNodeTls(): Promise<NodeTlsSource> {
  return nodeTlsSource(await testCa());
}

/**
 * TLS for a Redis a test starts itself (ensureRedisServer's `tls`): its
 * server certificate from the test file's CA, and a client certificate of
 * that CA for the test's clients (`redisTls.client` in their endpoint).
 */
export async function testRedisTls(): Promise<OwnRedisTls> {
  return ownRedisTls(await testCa());
}

/** The serial (upper-case hex) of the certificate a TLS server (the API) presents to a new client verifying it against `ca`. */
export function servedTlsSerial(host: string, port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host, port, ca, rejectUnauthorized: true }, () => {
      const serial = socket.getPeerX509Certificate()?.serialNumber.toUpperCase();
      socket.destroy();
      if (serial === undefined) reject(new Error(`${host}:${port} presented no certificate`));
      else resolve(serial);
    });
    socket.once("error", reject);
  });
}
