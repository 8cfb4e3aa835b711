import { cliEnvFor } from "../helpers/cli-env";
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import path from "node:path";
import type { JournalEntry } from "../../src/failover/operation-journal";
import { projectRoot } from "../../src/util/project-root";
import { freePort } from "../helpers/ports";
import { eventually, useTestCluster } from "../helpers/service";

const BIN = path.join(projectRoot(), "bin/relevo");

/**
 * Two service instances on one cluster, the second a process of its own
 * (`relevo up`) that runs the failover monitor. The primary dies; that
 * instance starts the failover and is SIGKILLed in the middle of it; this one
 * takes the lease over, adopts the journal and completes the failover.
 */
describe("the instance running a failover is killed half-way", () => {
  const cluster = useTestCluster("failover-killed", { leaseTtlMs: 2000 });
  let child: ChildProcessWithoutNullStreams | null = null;
  afterAll(() => {
    child?.kill("SIGKILL");
  });

  test("the standby instance completes it", async () => {
    const { config, service } = cluster;
    await eventually(async () => ((await service.failover.state())?.eligible.includes("node2") ? true : undefined), {
      what: "node2 eligible",
    });
    const env = cliEnvFor(config, {
      RELEVO_API_PORT: String(await freePort()),
      RELEVO_LEASE_TTL_MS: "2000",
      RELEVO_SCHEDULE_FULL_BACKUP: "off",
      RELEVO_SCHEDULE_DIFFERENTIAL_BACKUP: "off",
      RELEVO_SCHEDULE_INCREMENTAL_BACKUP: "off",
      RELEVO_SCHEDULE_VERIFY: "off",
    });
    const started = spawn("node", [BIN, "up"], { env });
    child = started;
    let output = "";
    started.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    started.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    await eventually(() => (/Operator token:/.test(output) ? true : undefined), {
      what: `the second instance up (${output})`,
      timeoutMs: 60000,
    });

    // Hand the monitor to the other instance: this one steps down, then stands by.
    await service.failover.stop();
    await eventually(async () => ((await service.redis.get(service.keys.leases.failoverMonitor)) !== null ? true : undefined), {
      what: "the other instance leading",
    });
    service.failover.start();
    expect(service.failover.leading).toBe(false);

    await service.driver.kill(service.nodes[0]!);
    // The other instance journals the failover; it dies at the first sight of it.
    const entryKey = service.keys.operation.entry;
    let begun: JournalEntry | null = null;
    const deadline = Date.now() + 30000;
    while (!begun && Date.now() < deadline) {
      const raw = await service.redis.get(entryKey);
      if (raw) begun = JSON.parse(raw) as JournalEntry;
      else await new Promise((resolve) => setTimeout(resolve, 5));
    }
    started.kill("SIGKILL");
    expect(begun).toMatchObject({ kind: "failover", trigger: "automatic", from: "node1" });

    await eventually(
      async () =>
        (await service.failover.state())!.primary === "node2" && (await service.failover.operation()) === null ? true : undefined,
      {
        what: "the failover completed here",
        timeoutMs: 60000,
      },
    );
    expect(service.failover.leading).toBe(true);
    const [record] = await service.failover.failovers(1);
    expect(record).toMatchObject({ id: begun!.id, kind: "failover", from: "node1", to: "node2", status: "completed" });
  });
});
