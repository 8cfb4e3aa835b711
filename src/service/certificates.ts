import { CertificateRotation } from "../cluster/certificate-rotation";
import type { NodeDriver } from "../nodes/node-driver";
import type { Credentials } from "../postgres/connection";
import type { LiveAuthority } from "../tls/live-authority";
import type { StartContext } from "./cleanups";
import type { Members } from "./nodes-and-topology";
import type { RedisAndEvents } from "./redis-and-events";

/** How often the certificates' expiry is checked after the one at start. Leaves live a year: twice a day is plenty. */
const EXPIRY_CHECK_INTERVAL_MS = 12 * 60 * 60 * 1000;

/**
 * Certificate rotation (the API's rotateCertificates) and the expiry check:
 * once now, then every EXPIRY_CHECK_INTERVAL_MS; and the CA's files
 * followed every topology poll interval.
 */
export async function startCertificates(
  options: StartContext & {
    readonly ca: LiveAuthority;
    readonly driver: NodeDriver;
    readonly members: Members;
    readonly superuser: Credentials;
    readonly redis: RedisAndEvents;
  },
): Promise<CertificateRotation> {
  const { config, logger, cleanups, ca, driver, members, superuser, redis } = options;
  const rotation = new CertificateRotation({ config, ca, driver, nodes: members.nodes, superuser, events: redis.events, logger });
  const check = (): Promise<void> =>
    rotation.checkExpiry().catch((error: Error) => logger.warn({ err: error.message }, "the certificates' expiry was not checked"));
  await check();
  const timer = setInterval(() => void check(), EXPIRY_CHECK_INTERVAL_MS);
  timer.unref();
  cleanups.push(() => clearInterval(timer));
  // Another instance on this data home may rotate the CA: its trust file is followed, as members.json is.
  const follow = setInterval(() => {
    ca.reloadIfChanged().then(
      (reloaded) => reloaded && logger.info({ caFile: ca.authority.certificateFile }, "the CA's files changed: reloaded"),
      (error: Error) => logger.warn({ err: error.message }, "the CA's files were not re-read"),
    );
  }, config.topologyPollIntervalMs);
  follow.unref();
  cleanups.push(() => clearInterval(follow));
  return rotation;
}
