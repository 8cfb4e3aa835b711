import { chooseTestDrivers } from "../helpers/drivers";

describe("RELEVO_TEST_DRIVERS: which drivers the scenarios run on", () => {
  test("unset or empty: both, with nothing to say", () => {
    expect(chooseTestDrivers({ wanted: undefined, ci: false })).toEqual({ drivers: ["local", "docker"], warning: null });
    expect(chooseTestDrivers({ wanted: " ", ci: true })).toEqual({ drivers: ["local", "docker"], warning: null });
    expect(chooseTestDrivers({ wanted: "docker, local", ci: true })).toEqual({ drivers: ["local", "docker"], warning: null });
  });

  test("narrowed outside CI: the drivers asked for, and a warning naming the one left out", () => {
    expect(chooseTestDrivers({ wanted: "local", ci: false })).toEqual({
      drivers: ["local"],
      warning: "RELEVO_TEST_DRIVERS=local: the scenarios do not run on docker",
    });
    expect(chooseTestDrivers({ wanted: "docker", ci: true })).toEqual({
      drivers: ["docker"],
      warning: "RELEVO_TEST_DRIVERS=docker: the scenarios do not run on local",
    });
  });

  test("Docker left out in CI is an error", () => {
    expect(() => chooseTestDrivers({ wanted: "local", ci: true })).toThrow(/leaves the docker driver out, and CI runs both drivers/);
  });

  test("a name that is not a driver is an error, never a driver silently dropped", () => {
    expect(() => chooseTestDrivers({ wanted: "local,dokcer", ci: false })).toThrow(/dokcer is not a driver/);
  });
});
