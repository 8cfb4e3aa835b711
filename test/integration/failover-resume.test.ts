import { loadConfig } from "../../src/config/config";
import { ClusterStateStore, withName } from "../../src/failover/cluster-state";
import { fenceNode } from "../../src/failover/fencing";
import { OperationJournal, type JournalEntry } from "../../src/failover/operation-journal";
import { createLogger } from "../../src/log";
import { startRelevo, type RelevoService } from "../../src/service";
import { freePort } from "../helpers/ports";
import { eventually, startTestCluster, type TestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";
import { ErrorCode } from "../../src/errors";
import type { NodeRef } from "../../src/nodes/node-driver";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { expect } from "@jest/globals";
import { claimNodeTarget } from "../../src/restore/target-claim";
import { runAddReplica } from "../../src/cluster/replicas";
import { newEntry, type OperationContext } from "../../src/failover/operation-context";
import type { FailoverOperations } from "../../src/failover/operations";

/** Two service instances; the one running a failover dies half-way through it. */
describe("a failover left half-done by a dead instance", () => {
  let first: TestCluster;
  let second: RelevoService | null = null;

  beforeAll(async () => {
    first = await startTestCluster("failover-resume", { leaseTtlMs: 2000 });
    second = await startRelevo(
      loadConfig({}, { ...first.config, apiPort: await freePort() }),
      createLogger({ level: first.config.logLevel }),
    );
  });
  /** An operation begun by an instance that then dies (its journal lock not renewed once the caller abandons it). */
  const beginAsDeadInstance = (entry: Pick<JournalEntry, "id" | "kind" | "trigger" | "from" | "to" | "reason" | "facts">) =>
    new OperationJournal(
      first.service.redis,
      first.service.keys.operation,
      first.config.leaseTtlMs,
      "dead-instance",
      createLogger({ level: "silent" }),
    ).begin({ ...entry, force: false, stage: "begun", startedAt: new Date().toISOString(), times: {} });
  afterAll(async () => {
    await second?.stop({ reason: "test finished", keepNodes: true, keepRedis: true });
    await first?.stop();
  });

  test("one monitor between the two instances; a concurrent operation is OPERATION_IN_PROGRESS", async () => {
    await eventually(() => ([first.service.failover.leading, second!.failover.leading].filter(Boolean).length === 1 ? true : undefined), {
      what: "one leader",
    });
    await eventually(async () => ((await first.service.failover.state())?.eligible.includes("node2") ? true : undefined), {
      what: "node2 eligible",
    });
    // A backup running (its lease held, here by hand) blocks a planned change of primary.
    const backupLease = first.service.keys.leases.backup;
    await first.service.redis.set(backupLease, "a backup elsewhere", "PX", 10000);
    await expect(second!.failover.switchover("node2")).rejects.toMatchObject({ code: ErrorCode.BackupInProgress });
    await first.service.redis.del(backupLease);
    const running = first.service.failover.switchover("node2");
    // Asked while the switchover's journal entry is there (its checks before it take a varying time).
    const deadline = Date.now() + 5000;
    while ((await second!.failover.operation()) === null && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 2));
    await expect(second!.failover.failback()).rejects.toMatchObject({ code: ErrorCode.OperationInProgress });
    await running;
    await first.service.failover.failback();
    expect((await first.service.failover.state())!.primary).toBe("node1");
  });

  test("the other instance adopts the journal once its runner's lock expires, and completes the failover", async () => {
    const { redis, keys, driver, nodes, secrets } = first.service;
    const [node1, node2] = [nodes[0]!, nodes[1]!];
    await eventually(async () => ((await first.service.failover.state())?.eligible.includes("node2") ? true : undefined), {
      what: "node2 eligible",
    });
    await sqlOn(node1, secrets, "CREATE TABLE IF NOT EXISTS acked (id int PRIMARY KEY)");
    await sqlOn(node1, secrets, "INSERT INTO acked VALUES (1)");
    // What an instance had done when it died: journaled the failover, fenced the primary, recorded the fence.
    const operation = await beginAsDeadInstance({
      id: "00000000-0000-4000-8000-000000000001",
      kind: "failover",
      trigger: "automatic",
      from: "node1",
      to: null,
      reason: "missed 3 checks (test)",
      facts: { lastPrimaryLsn: null },
    });
    await operation.record({ stage: "detected" }, "detected");
    await fenceNode(driver, node1, "failover by the dead instance", createLogger({ level: "silent" }));
    await new ClusterStateStore(redis, keys.clusterState).update(operation.guard, (state) => ({
      ...state!,
      fenced: withName(state!.fenced, "node1"),
    }));
    await operation.record({ stage: "fenced" }, "fenced");
    operation.abandon(); // the instance dies: its lock is no longer renewed

    await eventually(
      async () =>
        (await first.service.failover.state())!.primary === "node2" && (await first.service.failover.operation()) === null
          ? true
          : undefined,
      {
        what: "the failover completed by a live instance",
        timeoutMs: 60000,
      },
    );
    const [record] = await first.service.failover.failovers(1);
    expect(record).toMatchObject({ id: "00000000-0000-4000-8000-000000000001", from: "node1", to: "node2", status: "completed" });
    expect((await sqlOn(node2, secrets, "SELECT id FROM acked")).length).toBe(1);
    await sqlOn(node2, secrets, "INSERT INTO acked VALUES (2)");
  });

  test("a replica added through one instance is a member in the other, and removed through it", async () => {
    await eventually(
      async () =>
        (await first.service.failover.operation()) === null && (await first.service.failover.state())!.fenced.length === 0
          ? true
          : undefined,
      {
        what: "node1 rejoined",
        timeoutMs: 60000,
      },
    );
    await first.service.failover.addReplica("node3");
    await eventually(() => (second!.nodes.some((n) => n.name === "node3") ? true : undefined), {
      what: "node3 known to the second instance",
    });
    await second!.failover.removeReplica("node3");
    await eventually(() => (!first.service.nodes.some((n) => n.name === "node3") ? true : undefined), {
      what: "node3 forgotten by the first instance",
    });
  });
  test("a resumed addition whose seed never began destroys nothing: what appeared under the name since is kept, the addition refused", async () => {
    const { driver } = first.service;
    const stranger: NodeRef = { name: "node7", host: "127.0.0.1", port: await freePort() };
    // Someone's data under that name, made after the addition's check (a restored copy, say).
    const directory = driver.dataDirectory(stranger);
    await mkdir(directory, { recursive: true });
    await writeFile(path.join(directory, "keep-me"), "someone's data");
    const operation = await beginAsDeadInstance({
      id: "00000000-0000-4000-8000-000000000007",
      kind: "add-replica",
      trigger: "manual",
      from: "node7",
      to: (await first.service.failover.state())!.primary,
      reason: "replica added by an operator (test)",
      facts: { port: stranger.port },
    });
    operation.abandon(); // the instance dies before it began the seed

    await eventually(async () => ((await first.service.failover.operation()) === null ? true : undefined), {
      what: "the addition resumed and ended",
      timeoutMs: 30000,
    });
    expect(await readFile(path.join(directory, "keep-me"), "utf8")).toBe("someone's data");
    expect(first.service.nodes.some((node) => node.name === "node7")).toBe(false);
    await rm(path.dirname(directory), { recursive: true, force: true });
  });

  test("an addition whose seed had begun, run again while another process claims the name (a restore making a copy there): refused at once, the copy's files kept", async () => {
    const { driver } = first.service;
    const copy: NodeRef = { name: "node8", host: "127.0.0.1", port: await freePort() };
    // The restore's claim, and what it wrote so far.
    const claim = await claimNodeTarget(driver, copy, { purpose: "restore into node8 (a test)" });
    const directory = driver.dataDirectory(copy);
    await mkdir(directory, { recursive: true });
    await writeFile(path.join(directory, "keep-me"), "the copy's data");
    // The addition as the monitor resumes it (its seed begun: it clears its own half-made node), without the wait a
    // resumed one allows a dead runner's claim on another host.
    const { operations } = (first.service.failover as unknown as { deps: { operations: FailoverOperations } }).deps;
    const context = (operations as unknown as { context: OperationContext }).context;
    const operation = await context.deps.journal.begin(
      newEntry({
        kind: "add-replica",
        trigger: "manual",
        from: copy.name,
        to: (await first.service.failover.state())!.primary,
        reason: "replica added by an operator (test)",
        facts: { port: copy.port, seeding: "begun" },
      }),
    );
    try {
      await expect(runAddReplica(context, operation, { claimWaitMs: 0 })).rejects.toMatchObject({
        code: ErrorCode.TargetNotEmpty,
        message: expect.stringContaining("is being made by another process"),
      });
    } finally {
      await operation.finish();
      await claim.release();
    }
    expect(await readFile(path.join(directory, "keep-me"), "utf8")).toBe("the copy's data");
    expect(first.service.nodes.some((node) => node.name === copy.name)).toBe(false);
    await rm(path.dirname(directory), { recursive: true, force: true });
  });
});
