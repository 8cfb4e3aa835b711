import type { ConnectionOptions } from "node:tls";
import { loadConfig } from "../../src/config/config";
import type { NodeTlsSource } from "../../src/nodes/node-driver";
import { CertificateAuthority } from "../../src/tls/certificate-authority";
import { nodeTlsSource } from "../../src/tls/node-tls";
import { tempHome } from "./home";

/** Where the CAs of a test file's clusters are listed (one module registry per file). */
const TRUST_KEY = "__relevoTestTrustedCas";
const SOURCE_KEY = "__relevoTestNodeTls";

function registry(): string[] {
  const global = globalThis as unknown as Record<string, string[] | undefined>;
  return (global[TRUST_KEY] ??= []);
}

/** Trusts `caPem` (a test cluster's CA) in this file's test clients from now on. */
export function trustCa(caPem: string): void {
  if (!registry().includes(caPem)) registry().push(caPem);
}

/**
 * TLS for a test's own pg clients: verify-full, as Relevo's own clients do
 * (the chain against the CAs of this file's clusters, the certificate
 * against the host), since nodes admit TLS connections only.
 */
export function testClientSsl(): ConnectionOptions {
  return { ca: [...registry()], rejectUnauthorized: true };
}

/** A CA of the test file's own (made once, in a temporary home), as the nodes' certificate source of a driver a test builds. */
export function testNodeTls(): Promise<NodeTlsSource> {
  const global = globalThis as unknown as Record<string, Promise<NodeTlsSource> | undefined>;
  return (global[SOURCE_KEY] ??= (async () => {
    const ca = await CertificateAuthority.load(loadConfig({}, { home: await tempHome("test-ca") }));
    trustCa(ca.certificatePem);
    return nodeTlsSource(ca);
  })());
}
