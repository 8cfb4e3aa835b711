import type { ConfigOverrides } from "../../src/config/config";
import { dockerOverrides, requireDockerEngine } from "./docker";

export type TestDriver = "local" | "docker";

const ALL_DRIVERS: readonly TestDriver[] = ["local", "docker"];

/**
 * Which drivers the scenarios run on, from RELEVO_TEST_DRIVERS (unset: both)
 * and CI. Pure. A narrowed run says what it leaves out (a `warning`), so a
 * green run on `local` is never mistaken for a full one; a name that is not
 * a driver is an error, not a driver silently dropped; and in CI, which runs
 * both drivers, leaving Docker out is an error.
 */
export function chooseTestDrivers(options: { readonly wanted: string | undefined; readonly ci: boolean }): {
  drivers: TestDriver[];
  warning: string | null;
} {
  if (options.wanted === undefined || options.wanted.trim() === "") return { drivers: [...ALL_DRIVERS], warning: null };
  const names = options.wanted
    .split(",")
    .map((name) => name.trim())
    .filter((name) => name !== "");
  const unknown = names.filter((name) => !(ALL_DRIVERS as readonly string[]).includes(name));
  if (unknown.length > 0) {
    throw new Error(
      `RELEVO_TEST_DRIVERS=${options.wanted}: ${unknown.join(", ")} is not a driver (the drivers: ${ALL_DRIVERS.join(", ")})`,
    );
  }
  const drivers = ALL_DRIVERS.filter((driver) => names.includes(driver));
  const left = ALL_DRIVERS.filter((driver) => !drivers.includes(driver));
  if (left.length === 0) return { drivers, warning: null };
  if (options.ci && left.includes("docker")) {
    throw new Error(`RELEVO_TEST_DRIVERS=${options.wanted} leaves the docker driver out, and CI runs both drivers: unset it in CI`);
  }
  return { drivers, warning: `RELEVO_TEST_DRIVERS=${options.wanted}: the scenarios do not run on ${left.join(", ")}` };
}

let warned = false;

/** The drivers a scenario runs on (see chooseTestDrivers); a narrowed run is said once per test file. */
export function testDrivers(): TestDriver[] {
  const { drivers, warning } = chooseTestDrivers({ wanted: process.env.RELEVO_TEST_DRIVERS, ci: process.env.CI === "true" });
  if (warning && !warned) {
    warned = true;
    process.stderr.write(`warning: ${warning}\n`);
  }
  return drivers;
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
