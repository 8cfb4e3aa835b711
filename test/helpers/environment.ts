import { rm } from "node:fs/promises";
import { TestEnvironment } from "jest-environment-node";
import { HOMES_KEY } from "./home";
import { removeDockerObjectsOf } from "./docker";

/**
 * Node's test environment, plus: the data homes a test file made (clusters,
 * repositories, restored copies — gigabytes for the backup suites) are removed
 * once the file's last hook has run (with the containers and volumes the
 * Docker driver made for them), so that a full run needs the disk of one
 * suite, not of all of them. RELEVO_TEST_KEEP_HOMES=1 keeps them for inspection.
 */
export default class RelevoTestEnvironment extends TestEnvironment {
  override async teardown(): Promise<void> {
    const homes = (this.global as Record<string, unknown>)[HOMES_KEY];
    if (Array.isArray(homes) && process.env.RELEVO_TEST_KEEP_HOMES !== "1") {
      // Containers and volumes of the Docker suites first (they hold the homes' repositories mounted).
      await removeDockerObjectsOf(homes as string[]);
      await Promise.all(homes.map((home: string) => rm(home, { recursive: true, force: true })));
    }
    await super.teardown();
  }
}
