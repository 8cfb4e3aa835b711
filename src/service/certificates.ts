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
    readonly servicesCa: LiveAuthority;
    readonly driver: NodeDriver;
    readonly members: Members;
    readonly superuser: Credentials;
    readonly redis: RedisAndEvents;
  },
): Promise<CertificateRotation> {
  const { config, logger, cleanups, ca, servicesCa, driver, members, superuser, redis } = options;
  const rotation = new CertificateRotation({
    config,
    ca,
    servicesCa,
    driver,
    nodes: members.nodes,
    superuser,
    events: redis.events,
    logger,
  });
  if (redis.certificates) {
    rotation.include(redis.certificates.server, { rotate: true, followCa: false });
    rotation.include(redis.certificates.client, { rotate: false, followCa: true });
  }
  // What the instances share (the members, Redis, the CAs) is checked by one of them per interval, the one that takes
  // the key first; each checks its own certificates (its API's, its Redis client certificate) every time.
  const check = async (): Promise<void> => {
    try {
      const key = redis.keys.expiryCheck;
      const shared = (await redis.client.set(key, redis.instanceId, "PX", EXPIRY_CHECK_INTERVAL_MS / 2, "NX")) === "OK";
      await rotation.checkExpiry(new Date(), { shared });
    } catch (error) {
      logger.warn({ err: (error as Error).message }, "the certificates' expiry was not checked");
    }
  };
  await check();
  const timer = setInterval(() => void check(), EXPIRY_CHECK_INTERVAL_MS);
  timer.unref();
  cleanups.push(() => clearInterval(timer));
  // Another instance on this data home may rotate the CAs: their trust files are followed, as members.json is.
  // Whoever notices first (this timer, or a node's start issuing its certificate) reloads; this instance's own
  // certificates (its API's, its Redis client certificate, both of the services CA) then follow.
  ca.onChangedElsewhere(() => {
    logger.info({ caFile: ca.authority.certificateFile }, "the CA's files changed: reloaded");
    return Promise.resolve();
  });
  servicesCa.onChangedElsewhere(async () => {
    logger.info({ caFile: servicesCa.authority.certificateFile }, "the CA's files changed: reloaded");
    await rotation
      .followCaChange()
      .catch((error: Error) => logger.warn({ err: error.message }, "this instance's certificates did not follow"));
  });
  const follow = setInterval(() => {
    for (const authority of [ca, servicesCa]) {
      authority.reloadIfChanged().catch((error: Error) => logger.warn({ err: error.message }, "the CA's files were not re-read"));
    }
  }, config.topologyPollIntervalMs);
  follow.unref();
  cleanups.push(() => clearInterval(follow));
  return rotation;
}
