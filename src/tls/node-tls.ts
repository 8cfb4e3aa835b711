import { ErrorCode, RelevoError } from "../errors";
import type { NodeRef, NodeTlsSource } from "../nodes/node-driver";
import type { CertificateAuthority } from "./certificate-authority";
import { nodeHolder, recordIssued, withHolderLock } from "./issued-certificates";
import { LiveAuthority } from "./live-authority";

/**
 * Every address a node is reached at, each a subjectAltName of its
 * certificate: today its host (RELEVO_HOST); the addresses a node gains
 * later (a proxy's, another host's) are `extra`. Pure.
 */
export function nodeAddresses(node: Pick<NodeRef, "host">, extra: readonly string[] = []): string[] {
  return [node.host, ...extra];
}

/**
 * The drivers' source of the nodes' certificates: a new one per start (and
 * per rotation), issued by the CA current at that moment, named after the
 * node. `recordIn`: the data home whose record of issued certificates a
 * start's files update (the service's nodes; not a restored copy's): what
 * is in place, never what was only issued (a renewal whose files were not
 * written must not count as the new CA's).
 */
export function nodeTlsSource(ca: CertificateAuthority | LiveAuthority, options: { readonly recordIn?: string } = {}): NodeTlsSource {
  const current = (): CertificateAuthority => ("authority" in ca ? ca.authority : ca);
  return {
    get caPem(): string {
      return current().certificatePem;
    },
    serverCertificate: async (node) => {
      // Another instance may have rotated the CA since the last poll: a node started now must not get the old one's.
      if (ca instanceof LiveAuthority) await ca.reloadIfChanged();
      return current().issueServerCertificate({ commonName: node.name, addresses: nodeAddresses(node) });
    },
    installed: async (node, certificatePem) => {
      if (options.recordIn !== undefined) await recordIssued(options.recordIn, nodeHolder(node.name), certificatePem);
    },
    exclusive: <T>(node: NodeRef, work: () => Promise<T>): Promise<T> =>
      options.recordIn === undefined
        ? work()
        : withHolderLock(options.recordIn, nodeHolder(node.name), { purpose: `start of ${node.name}`, waitMs: MEMBER_LOCK_WAIT_MS }, work),
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

/**
 * How long a start waits for a renewal of its node (or the reverse). A
 * renewal is a reload and a few checks, each bounded by the node timeout;
 * a start lasts as long as its server takes to accept connections.
 */
export const MEMBER_LOCK_WAIT_MS = 300_000;
