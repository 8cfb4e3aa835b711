import type { Client } from "pg";
import type { NodeDriver, NodeRef, NodeTlsFiles } from "../nodes/node-driver";
import { withNodeClient, type Credentials } from "../postgres/connection";
import { servedCertificate } from "../postgres/served-certificate";
import { sleep } from "../util/sleep";
import type { CertificateHolder, RenewalOutcome } from "../tls/certificate-holder";
import { certificateFacts, nodeHolder, recordIssued, withHolderLock } from "../tls/issued-certificates";
import { MEMBER_LOCK_WAIT_MS } from "../tls/node-tls";

export interface NodeCertificateDeps {
  readonly driver: NodeDriver;
  /** Relevo's superuser, whose trust is the CA as it is now. */
  readonly superuser: Credentials;
  readonly timeoutMs: number;
  /** The data home whose record of issued certificates follows what the node serves. */
  readonly home: string;
}

/**
 * A node's PostgreSQL server as a certificate holder: new files through the
 * driver (the path a start takes), `pg_reload_conf()`, and a TLS handshake
 * once the postmaster has reloaded, which must show the new serial.
 * PostgreSQL keeps its previous TLS context when the new files do not load
 * (it logs "SSL configuration was not reloaded"), so a refused reload costs
 * no connection; the previous files are put back so that no later reload
 * or restart meets the bad ones. A stopped node is left to its next start,
 * which issues a new certificate anyway; a paused one to the next rotation.
 */
export function nodeCertificateHolder(deps: NodeCertificateDeps, node: NodeRef): CertificateHolder {
  const holder = nodeHolder(node.name);
  return {
    holder,
    // Under the member's lock, across instances: a start of the node or another renewal waits (see withHolderLock).
    renew: (): Promise<RenewalOutcome> =>
      withHolderLock(deps.home, holder, { purpose: `renewal of ${holder}`, waitMs: MEMBER_LOCK_WAIT_MS }, () => renewLocked(deps, node)),
  };
}

async function renewLocked(deps: NodeCertificateDeps, node: NodeRef): Promise<RenewalOutcome> {
  const holder = nodeHolder(node.name);
  const state = await deps.driver.state(node);
  if (state.phase !== "running") {
    return { phase: "pending", holder, reason: `${state.phase}: gets a certificate of the current CA at its next start` };
  }
  const loadedBefore = await confLoadTime(deps, node);
  const { previous, installed } = await deps.driver.renewTls(node);
  const served = await reloadAndRead(deps, node, loadedBefore);
  const previousSerial = previous === null ? null : certificateFacts(previous.certificatePem).serial;
  const serial = certificateFacts(installed.certificatePem).serial;
  if (certificateFacts(served).serial === serial) {
    // Recorded once served, not when issued: a CA rotation's finish reads this record.
    await recordIssued(deps.home, holder, installed.certificatePem);
    return { phase: "renewed", holder, serial, previousSerial };
  }
  // The trust stays the new one: during a CA rotation the previous file may hold the old CA alone.
  await putBack(deps, node, previous && { ...previous, caPem: installed.caPem });
  return {
    phase: "refused",
    holder,
    reason: `PostgreSQL did not load the new certificate ${serial} (see its log: "SSL configuration was not reloaded"); the previous files were put back`,
    serial: certificateFacts(served).serial,
  };
}

/** The previous certificate and key back (with the current trust), reloaded, recorded as what the node serves. */
async function putBack(deps: NodeCertificateDeps, node: NodeRef, previous: NodeTlsFiles | null): Promise<void> {
  if (previous === null) return;
  await deps.driver.installTls(node, previous);
  await reloadAndRead(deps, node, await confLoadTime(deps, node));
  await recordIssued(deps.home, nodeHolder(node.name), previous.certificatePem);
}

function onNode<T>(deps: NodeCertificateDeps, node: NodeRef, work: (client: Client) => Promise<T>): Promise<T> {
  return withNodeClient(node, deps.superuser, deps.timeoutMs, work);
}

async function confLoadTime(deps: NodeCertificateDeps, node: NodeRef): Promise<string> {
  // Text, to the microsecond: a JavaScript Date would drop what tells two reloads within a millisecond apart.
  return onNode(deps, node, async (client) => (await client.query<{ t: string }>("SELECT pg_conf_load_time()::text AS t")).rows[0]!.t);
}

/**
 * Asks for a reload and waits until a new session shows the postmaster
 * reloaded (pg_conf_load_time moved): it reloads its TLS context in the
 * same signal handler, before it accepts another connection. Then the
 * certificate a new client is given.
 */
async function reloadAndRead(deps: NodeCertificateDeps, node: NodeRef, loadedBefore: string): Promise<string> {
  await onNode(deps, node, (client) => client.query("SELECT pg_reload_conf()"));
  const deadline = Date.now() + deps.timeoutMs;
  while ((await confLoadTime(deps, node)) === loadedBefore) {
    if (Date.now() > deadline) break; // read what it serves anyway: the serial tells
    await sleep(50);
  }
  return servedCertificate(node, { trust: deps.superuser.trustedCa, timeoutMs: deps.timeoutMs });
}
