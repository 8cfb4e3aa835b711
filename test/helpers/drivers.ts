import type { ConfigOverrides } from "../../src/config/config";
import { dockerOverrides, requireDockerEngine } from "./docker";

export type TestDriver = "local" | "docker";

/**
 * The drivers a scenario runs on: both, unless RELEVO_TEST_DRIVERS narrows
 * them (e.g. `local` on a machine without Docker). CI runs both.
 */
export function testDrivers(): TestDriver[] {
  const wanted = (process.env.RELEVO_TEST_DRIVERS ?? "local,docker").split(",").map((name) => name.trim());
  return (["local", "docker"] as const).filter((driver) => wanted.includes(driver));
}

/**
 * One describe block per driver, the same tests in each: the scenario is
 * the contract, the driver an implementation detail. On Docker the suite
 * fails at once, with what to do, when no engine or test image is there.
 */
export function describeOnEachDriver(title: string, body: (driver: TestDriver, overrides: ConfigOverrides) => void): void {
  for (const driver of testDrivers()) {
    describe(`${title} [${driver}]`, () => {
      if (driver === "docker") beforeAll(requireDockerEngine);
      body(
        driver,
        driver === "docker"
          ? dockerOverrides(
              title
                .replace(/[^a-z0-9]+/gi, "-")
                .slice(0, 12)
                .toLowerCase(),
            )
          : {},
      );
    });
  }
}
