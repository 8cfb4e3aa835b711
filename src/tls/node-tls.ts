import { ErrorCode, RelevoError } from "../errors";
import type { NodeRef, NodeTlsSource } from "../nodes/node-driver";
import type { CertificateAuthority } from "./certificate-authority";

/**
 * Every address a node is reached at, each a subjectAltName of its
 * certificate: today its host (RELEVO_HOST); the addresses a node gains
 * later (a proxy's, another host's) are `extra`. Pure.
 */
export function nodeAddresses(node: Pick<NodeRef, "host">, extra: readonly string[] = []): string[] {
  return [node.host, ...extra];
}

/** The drivers' source of the nodes' certificates: a new one per start, issued by `ca`, named after the node. */
export function nodeTlsSource(ca: CertificateAuthority): NodeTlsSource {
  return {
    caPem: ca.certificatePem,
    serverCertificate: (node) => ca.issueServerCertificate({ commonName: node.name, addresses: nodeAddresses(node) }),
  };
}

/**
 * For a driver that starts no node (the CLI's `status`): the CA for the
 * tools' trust, and a refusal, should a start be asked of it anyway.
 */
export function trustOnlyTlsSource(caPem: string): NodeTlsSource {
  return {
    caPem,
    serverCertificate: (node) =>
      Promise.reject(
        new RelevoError(ErrorCode.Internal, `no certificate is issued here: node ${node.name} is not started by this command`),
      ),
  };
}
