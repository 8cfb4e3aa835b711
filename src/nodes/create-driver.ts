import type { RelevoConfig } from "../config/config";
import { UnreachableCaseError } from "../errors";
import { LocalDriver } from "./local/local-driver";
import type { NodeDriver } from "./node-driver";

export function createNodeDriver(config: Pick<RelevoConfig, "driver" | "home" | "pgBinDir" | "pgOsUser">): NodeDriver {
  switch (config.driver) {
    case "local":
      return new LocalDriver({ home: config.home, pgBinDir: config.pgBinDir, pgOsUser: config.pgOsUser });
    default:
      throw new UnreachableCaseError(config.driver);
  }
}
