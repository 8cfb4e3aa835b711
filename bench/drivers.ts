/** The node drivers a benchmark compares, one column each. */
export type BenchDriver = "local" | "docker";

/** The image of the Docker column's nodes (the test image: nothing can be pulled on the development machines). */
export const BENCH_DOCKER_IMAGE = process.env.BENCH_DOCKER_IMAGE ?? "relevo-test/postgres:15";

/** Runs `measure` once per driver of BENCH_DRIVERS (default "local,docker"), one after the other (never side by side: they would share the cores). */
export async function measureOnEachDriver<T extends object>(
  measure: (driver: BenchDriver) => Promise<T>,
): Promise<Array<T & { driver: BenchDriver }>> {
  const drivers = (process.env.BENCH_DRIVERS ?? "local,docker").split(",").map((name) => name.trim()) as BenchDriver[];
  const results: Array<T & { driver: BenchDriver }> = [];
  for (const driver of drivers) {
    process.stderr.write(`--- ${driver} driver\n`);
    results.push({ driver, ...(await measure(driver)) });
  }
  return results;
}
