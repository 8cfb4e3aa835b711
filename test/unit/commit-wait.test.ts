import { CommitWaitConfirmation } from "../../src/failover/sync-join";
import { testNode } from "../helpers/node-facts";

/**
 * The bookkeeping of when the monitor may take join points: only after a
 * checkpoint requested once the synchronous setting was reloaded has
 * finished (the checkpointer, which decides whether commits wait at all, has
 * then read the setting). The checkpoints here are ones the test finishes by
 * hand; the monitor's real CHECKPOINT runs in the failover suites.
 */
class Checkpoints {
  readonly requested: string[] = [];
  private readonly open: Array<{ resolve: () => void; reject: (error: Error) => void }> = [];
  readonly aborted: string[] = [];
  readonly run = (primary: { name: string }, stopping: AbortSignal): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      this.requested.push(primary.name);
      this.open.push({ resolve, reject });
      // As the monitor's does: the connection ended, the query fails.
      stopping.addEventListener("abort", () => {
        this.aborted.push(primary.name);
        reject(new Error("Connection terminated"));
      });
    });
  finish(index: number): Promise<void> {
    this.open[index]!.resolve();
    return new Promise((resolve) => setImmediate(resolve));
  }
  fail(index: number): Promise<void> {
    this.open[index]!.reject(new Error("connection refused"));
    return new Promise((resolve) => setImmediate(resolve));
  }
}

const node1 = testNode("node1");
const node2 = testNode("node2");

describe("commits are known to wait for the synchronous set only after a checkpoint that followed the setting", () => {
  test("a set that went from empty is unconfirmed until the checkpoint requested after it finishes", async () => {
    const checkpoints = new Checkpoints();
    const commitWait = new CommitWaitConfirmation(checkpoints.run);
    commitWait.observe("node1", "");
    expect(commitWait.confirmed("node1")).toBe(false);
    commitWait.request(node1);
    commitWait.request(node1); // one checkpoint at a time
    expect(checkpoints.requested).toEqual(["node1"]);
    expect(commitWait.confirmed("node1")).toBe(false);
    await checkpoints.finish(0);
    expect(commitWait.confirmed("node1")).toBe(true);
    commitWait.observe("node1", 'ANY 1 ("node2")');
    commitWait.request(node1);
    expect(checkpoints.requested).toEqual(["node1"]); // confirmed: nothing more to ask
  });

  test("a checkpoint requested before the setting went empty confirms nothing", async () => {
    const checkpoints = new Checkpoints();
    const commitWait = new CommitWaitConfirmation(checkpoints.run);
    commitWait.request(node1);
    commitWait.observe("node1", ""); // the set emptied meanwhile (every standby left)
    await checkpoints.finish(0);
    expect(commitWait.confirmed("node1")).toBe(false);
    commitWait.request(node1);
    expect(checkpoints.requested).toEqual(["node1", "node1"]);
    await checkpoints.finish(1);
    expect(commitWait.confirmed("node1")).toBe(true);
  });

  test("another primary is unconfirmed; a failed checkpoint is asked for again", async () => {
    const checkpoints = new Checkpoints();
    const commitWait = new CommitWaitConfirmation(checkpoints.run);
    commitWait.request(node1);
    await checkpoints.finish(0);
    commitWait.observe("node2", 'ANY 1 ("node1")'); // a failover or switchover made node2 the primary
    expect(commitWait.confirmed("node2")).toBe(false);
    expect(commitWait.confirmed("node1")).toBe(false);
    commitWait.request(node2);
    await checkpoints.fail(1);
    expect(commitWait.confirmed("node2")).toBe(false);
    commitWait.request(node2);
    expect(checkpoints.requested).toEqual(["node1", "node2", "node2"]);
    await checkpoints.finish(2);
    expect(commitWait.confirmed("node2")).toBe(true);
    await commitWait.settled(1000);
  });

  test("stopping waits for a checkpoint under way up to its bound, then ends it", async () => {
    const finishing = new Checkpoints();
    const waited = new CommitWaitConfirmation(finishing.run);
    waited.request(node1);
    const settling = waited.settled(5000);
    await finishing.finish(0);
    await settling;
    expect(waited.confirmed("node1")).toBe(true);
    expect(finishing.aborted).toEqual([]);

    const hanging = new Checkpoints();
    const stopped = new CommitWaitConfirmation(hanging.run);
    stopped.request(node1);
    const started = Date.now();
    await stopped.settled(200);
    expect(Date.now() - started).toBeGreaterThanOrEqual(190);
    expect(hanging.aborted).toEqual(["node1"]);
    expect(stopped.confirmed("node1")).toBe(false);
    // Started again, the monitor asks again, and is not aborted by the old stop.
    stopped.request(node1);
    expect(hanging.requested).toEqual(["node1", "node1"]);
    await hanging.finish(1);
    expect(stopped.confirmed("node1")).toBe(true);
    expect(hanging.aborted).toEqual(["node1"]);
  });
});
