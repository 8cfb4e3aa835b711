import path from "node:path";
import type { RelevoConfig } from "../config/config";
import { UnreachableCaseError } from "../errors";
import { DockerDriver } from "./docker/docker-driver";
import { LocalDriver } from "./local/local-driver";
import type { NodeDriver, NodeTlsSource } from "./node-driver";

export type DriverConfig = Pick<
  RelevoConfig,
  "driver" | "home" | "pgBinDir" | "pgOsUser" | "clusterName" | "dockerImage" | "dockerHost" | "dockerCertPath"
>;

/**
 * The driver of the configuration. `tls`: the nodes' certificates (see
 * nodeTlsSource). `directories` puts nodes' data in directories of this
 * machine instead of the driver's usual place (a restored copy the operator
 * put elsewhere): node name → directory that holds (local) or is (docker)
 * its data directory.
 */
export function createNodeDriver(
  config: DriverConfig,
  options: { readonly tls: NodeTlsSource; readonly directories?: Readonly<Record<string, string>> },
): NodeDriver {
  const directories = options.directories ?? {};
  switch (config.driver) {
    case "local":
      return new LocalDriver({
        home: config.home,
        pgBinDir: config.pgBinDir,
        pgOsUser: config.pgOsUser,
        nodeDirectories: directories,
        tls: options.tls,
      });
    case "docker":
      return new DockerDriver({
        endpoint: { host: config.dockerHost, certPath: config.dockerCertPath },
        clusterName: config.clusterName,
        image: config.dockerImage,
        home: config.home,
        dataDirectories: Object.fromEntries(Object.entries(directories).map(([name, directory]) => [name, path.join(directory, "data")])),
        tls: options.tls,
      });
    default:
      throw new UnreachableCaseError(config.driver);
  }
}

/** Runs `work` with a driver and closes it after, whatever happens (a CLI command must be able to exit). */
export async function usingDriver<T>(driver: NodeDriver, work: (driver: NodeDriver) => Promise<T>): Promise<T> {
  try {
    return await work(driver);
  } finally {
    await driver.close();
  }
}
