import type { RelevoConfig } from "../config/config";
import { UnreachableCaseError } from "../errors";
import { DockerDriver } from "./docker/docker-driver";
import { LocalDriver } from "./local/local-driver";
import type { NodeDriver } from "./node-driver";

export type DriverConfig = Pick<
  RelevoConfig,
  "driver" | "home" | "pgBinDir" | "pgOsUser" | "clusterName" | "repository" | "dockerImage" | "dockerHost" | "dockerCertPath" | "dockerRepositoryVolume"
>;

export function createNodeDriver(config: DriverConfig): NodeDriver {
  switch (config.driver) {
    case "local":
      return new LocalDriver({ home: config.home, pgBinDir: config.pgBinDir, pgOsUser: config.pgOsUser });
    case "docker":
      return new DockerDriver({
        endpoint: { host: config.dockerHost, certPath: config.dockerCertPath },
        clusterName: config.clusterName,
        image: config.dockerImage,
        home: config.home,
        repository: config.dockerRepositoryVolume
          ? { kind: "volume", name: config.dockerRepositoryVolume, path: config.repository }
          : { kind: "bind", path: config.repository },
      });
    default:
      throw new UnreachableCaseError(config.driver);
  }
}
