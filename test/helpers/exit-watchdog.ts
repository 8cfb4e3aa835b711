/**
 * Jest's global teardown: the run must end by itself. Every test file runs in
 * this one process (--runInBand), so a client, server, timer or child process
 * one of them left running keeps Node alive after the last test, and Jest
 * would wait forever (CI would run out its clock instead of failing). Jest's
 * `forceExit` would hide such a leak; this names it and fails the run
 * instead, once the leak has had time to close by itself. The test
 * environment (environment.ts) has already named, per file, who left it.
 */
const GRACE_MS = Number(process.env.RELEVO_TEST_EXIT_GRACE_MS ?? 15_000);

export default function exitWatchdog(): void {
  const timer = setTimeout(() => {
    const left = process.getActiveResourcesInfo();
    process.stderr.write(
      `relevo test run: still running ${GRACE_MS} ms after the last test: ${left.join(", ")}; ` +
        "a test file left a client, server, timer or child process open (see the per-file reports above); failing the run\n",
    );
    process.exit(1);
  }, GRACE_MS);
  // The watchdog itself must not be what keeps the process alive.
  timer.unref();
}
