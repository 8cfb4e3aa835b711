import Docker from "dockerode";
import { randomBytes } from "node:crypto";
import type { ConfigOverrides } from "../../src/config/config";

/** The image scripts/docker/build-test-image.sh builds from this machine's PostgreSQL packages. */
export const TEST_IMAGE = process.env.RELEVO_TEST_DOCKER_IMAGE ?? "relevo-test/postgres:15";

/**
 * Fails the suite, loudly, when no Docker engine answers or the test image is
 * missing: the Docker suites are never skipped quietly (`npm test` starts the
 * engine and builds the image first, in scripts/setup.sh).
 */
export async function requireDockerEngine(): Promise<void> {
  const docker = new Docker({ socketPath: "/var/run/docker.sock" });
  try {
    await docker.ping();
  } catch (error) {
    throw new Error(
      `the Docker suites need a Docker engine on /var/run/docker.sock and none answers (${(error as Error).message}): ` +
        `run scripts/setup.sh test (as npm test does)`,
      { cause: error },
    );
  }
  try {
    await docker.getImage(TEST_IMAGE).inspect();
  } catch {
    throw new Error(`the Docker suites need the image ${TEST_IMAGE}: run scripts/setup.sh test (as npm test does)`);
  }
}

/** Overrides that run a cluster on the Docker driver, under a cluster name no other test uses (container names are global). */
export function dockerOverrides(label: string): ConfigOverrides {
  return { driver: "docker", dockerImage: TEST_IMAGE, clusterName: `t-${label}-${randomBytes(3).toString("hex")}` };
}

/** Removes every container and volume a test home's driver made (labelled with the home). */
export async function removeDockerObjectsOf(homes: readonly string[]): Promise<void> {
  if (homes.length === 0) return;
  const docker = new Docker({ socketPath: "/var/run/docker.sock" });
  try {
    await docker.ping();
  } catch {
    return; // no engine: nothing of ours can exist
  }
  for (const home of homes) {
    const filters = { label: [`io.relevo.home=${home}`] };
    for (const container of await docker.listContainers({ all: true, filters })) {
      await docker
        .getContainer(container.Id)
        .remove({ force: true, v: true })
        .catch(() => undefined);
    }
    const { Volumes } = await docker.listVolumes({ filters });
    for (const volume of Volumes ?? [])
      await docker
        .getVolume(volume.Name)
        .remove({ force: true })
        .catch(() => undefined);
  }
}

/** A node container as docker compose makes it (see makeComposeNodeContainer). */
export interface ComposeNodeContainer {
  readonly id: string;
  readonly volume: string;
  /** Removes it, every container on its volume (Relevo's tools container too) and then the volume. */
  remove(): Promise<void>;
}

/**
 * What docker compose makes for a node before Relevo ever runs: a container
 * carrying the node's labels — another home's, so Relevo adopts it and never
 * deletes it — with a volume of its own and a restart policy; with
 * `repository`, that directory mounted read-only at the same path, as compose
 * mounts the repository volume (a restore's restore_command reads it).
 */
export async function makeComposeNodeContainer(
  clusterName: string,
  node: string,
  options: { repository?: string } = {},
): Promise<ComposeNodeContainer> {
  const docker = new Docker({ socketPath: "/var/run/docker.sock" });
  const volume = `${clusterName}-compose-${node}`;
  await docker.createVolume({ Name: volume, Labels: { "io.relevo.home": "adopted" } });
  const made = await docker.createContainer({
    name: `${clusterName}-compose-${node}-1`,
    Image: TEST_IMAGE,
    Cmd: ["postgres"],
    User: "postgres",
    Labels: { "io.relevo.cluster": clusterName, "io.relevo.node": node, "io.relevo.role": "node", "io.relevo.home": "adopted" },
    HostConfig: {
      NetworkMode: "host",
      RestartPolicy: { Name: "unless-stopped" },
      Mounts: [
        { Type: "volume", Source: volume, Target: "/var/lib/postgresql/data" },
        ...(options.repository ? [{ Type: "bind" as const, Source: options.repository, Target: options.repository, ReadOnly: true }] : []),
      ],
    },
  });
  return {
    id: made.id,
    volume,
    remove: async () => {
      const filters = { label: [`io.relevo.cluster=${clusterName}`, `io.relevo.node=${node}`] };
      for (const container of await docker.listContainers({ all: true, filters })) {
        await docker
          .getContainer(container.Id)
          .remove({ force: true, v: true })
          .catch(() => undefined);
      }
      await docker
        .getVolume(volume)
        .remove({ force: true })
        .catch(() => undefined);
    },
  };
}
