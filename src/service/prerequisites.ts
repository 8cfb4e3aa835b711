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
  /** Relevo's CA, as it is now (a rotation changes it): the nodes' certificates, and the trust of every connection to them. */
  readonly ca: LiveAuthority;
}

/** The node driver (its prerequisites met), the secrets and the CA of this home, and the API's port free. */
export async function checkPrerequisites({ config, cleanups, logger }: StartContext): Promise<Prerequisites> {
  // A plain API on an address other machines reach is refused before anything starts (RELEVO_API_TLS).
  apiTransport(config);
  const ca = new LiveAuthority(await CertificateAuthority.load(config), config);
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
  return { driver, secrets, ca };
}
