import { rm } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { TestEnvironment } from "jest-environment-node";
import { HOMES_KEY } from "./home";
import { removeDockerObjectsOf } from "./docker";

/**
 * Node's test environment, plus: the data homes a test file made (clusters,
 * repositories, restored copies — gigabytes for the backup suites) are removed
 * once the file's last hook has run (with the containers and volumes the
 * Docker driver made for them), so that a full run needs the disk of one
 * suite, not of all of them. RELEVO_TEST_KEEP_HOMES=1 keeps them for inspection.
 *
 * And: what a file leaves running (sockets, timers, child processes) is named
 * when it ends. All files share one process (--runInBand), so one client a
 * file forgot keeps the whole run from exiting; Jest's own --detectOpenHandles
 * names it only at the end of the run, not which file left it.
 * RELEVO_TEST_LEAKS=fail makes a leak fail the file.
 */
export default class RelevoTestEnvironment extends TestEnvironment {
  private resourcesBefore: Map<string, number> = new Map();

  override async setup(): Promise<void> {
    await super.setup();
    this.resourcesBefore = countResources();
  }

  override async teardown(): Promise<void> {
    const homes = (this.global as Record<string, unknown>)[HOMES_KEY];
    if (Array.isArray(homes) && process.env.RELEVO_TEST_KEEP_HOMES !== "1") {
      // Containers and volumes of the Docker suites first (they hold the homes' repositories mounted).
      await removeDockerObjectsOf(homes as string[]);
      await Promise.all(homes.map((home: string) => rm(home, { recursive: true, force: true })));
    }
    await super.teardown();
    await this.reportLeaks();
  }

  private async reportLeaks(): Promise<void> {
    // Sockets closed in the last hook finish closing on the next turns of the loop.
    let left = leftOver(this.resourcesBefore, countResources());
    for (let attempt = 0; left.length > 0 && attempt < 20; attempt += 1) {
      await sleep(100);
      left = leftOver(this.resourcesBefore, countResources());
    }
    if (left.length === 0) return;
    const message = `this test file left running: ${left.join(", ")} (an unclosed client, server, timer or child process)`;
    if (process.env.RELEVO_TEST_LEAKS === "fail") throw new Error(message);
    process.stderr.write(`relevo test environment: ${message}\n`);
  }
}

/** How many of each kind of resource keep the event loop alive (TCPWRAP, Timeout, ProcessWrap…). */
function countResources(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const kind of process.getActiveResourcesInfo()) counts.set(kind, (counts.get(kind) ?? 0) + 1);
  return counts;
}

function leftOver(before: Map<string, number>, after: Map<string, number>): string[] {
  const left: string[] = [];
  for (const [kind, count] of after) {
    const more = count - (before.get(kind) ?? 0);
    if (more > 0) left.push(`${more} ${kind}`);
  }
  return left;
}
