import { apiTransport } from "../config/api-transport";
import { createNodeDriver } from "../nodes/create-driver";
import { CertificateAuthority } from "../tls/certificate-authority";
import { LiveAuthority } from "../tls/live-authority";
import { nodeTlsSource } from "../tls/node-tls";
import type { NodeDriver } from "../nodes/node-driver";
import { loadOrCreateSecrets, type Secrets } from "../secrets/secrets-store";
import { removeAbandonedTemporaries } from "../util/durable-file";
import { assertPortFree } from "../util/ports";
import type { StartContext } from "./cleanups";

export interface Prerequisites {
  readonly driver: NodeDriver;
  readonly secrets: Secrets;
  /** The nodes' CA, as it is now (a rotation changes it): the nodes' certificates, and the trust of every connection to them. */
  readonly ca: LiveAuthority;
  /**
   * The services CA, as it is now: the API's and Redis's certificates and
   * Redis's client certificates, and the only CA Relevo's Redis clients
   * trust. Apart from the nodes' so that a node's key, which the PostgreSQL
   * OS user reads, is never a key of a certificate the API's or Redis's
   * clients accept (review 15, H1).
   */
  readonly servicesCa: LiveAuthority;
}

/** The node driver (its prerequisites met), the secrets and the CAs of this home, and the API's port free. */
export async function checkPrerequisites({ config, cleanups, logger }: StartContext): Promise<Prerequisites> {
  // A plain API on an address other machines reach is refused before anything starts (RELEVO_API_TLS).
  apiTransport(config);
  const ca = new LiveAuthority(await CertificateAuthority.load(config), config);
  // A data home from before the services CA gets it here (the load makes it beside the nodes' CA).
  const servicesCa = new LiveAuthority(await CertificateAuthority.load(config, { role: "services" }), config);
  // Every certificate the service's driver issues is recorded in the data home (relevo certificates list, CA rotation).
  const driver = createNodeDriver(config, { tls: nodeTlsSource(ca, { recordIn: config.home }) });
  // Last of the cleanups: the driver's open connections (the Docker driver's file agents).
  cleanups.push(() => driver.close());
  await driver.checkPrerequisites();
  const secrets = await loadOrCreateSecrets(config.home);
  // A crash mid-write leaves secrets.json's temporary (every password) beside it: not for long.
  const removed = await removeAbandonedTemporaries(config.home);
  if (removed.length > 0) logger.info({ files: removed }, "removed temporary files a crash left in the data home");
  await assertPortFree(config.host, config.apiPort, "the API", "RELEVO_API_PORT");
  return { driver, secrets, ca, servicesCa };
}
