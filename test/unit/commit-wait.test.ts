import { CommitWaitConfirmation, type ConfirmCommitWait } from "../../src/failover/sync-join";
import { checkpointFollowedReload, type ReloadConfirmation } from "../../src/postgres/checkpoint-after-reload";
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
  /** Whether each request was allowed to run a CHECKPOINT. */
  readonly allowed: boolean[] = [];
  private readonly open: Array<{
    resolve: (outcome: ReloadConfirmation) => void;
    reject: (error: Error) => void;
    checkpointIssued: () => void;
  }> = [];
  readonly aborted: string[] = [];
  readonly run: ConfirmCommitWait = (primary, { signal, mayCheckpoint, checkpointIssued }) =>
    new Promise<ReloadConfirmation>((resolve, reject) => {
      this.requested.push(primary.name);
      this.allowed.push(mayCheckpoint);
      // As the monitor's does: the connection ended, the query fails (a confirmation already over has no connection).
      const abort = (): void => {
        this.aborted.push(primary.name);
        reject(new Error("Connection terminated"));
      };
      const settle =
        <T>(then: (value: T) => void) =>
        (value: T) => {
          signal.removeEventListener("abort", abort);
          then(value);
        };
      signal.addEventListener("abort", abort);
      this.open.push({ resolve: settle(resolve), reject: settle(reject), checkpointIssued });
    });
  /** Sends the CHECKPOINT, as confirmReloadByCheckpoint reports it before it waits for the checkpoint. */
  issue(index: number): void {
    this.open[index]!.checkpointIssued();
  }
  finish(index: number, outcome: ReloadConfirmation = "checkpointed"): Promise<void> {
    if (outcome === "checkpointed") this.issue(index);
    this.open[index]!.resolve(outcome);
    return new Promise((resolve) => setImmediate(resolve));
  }
  fail(index: number, error = new Error("connection refused")): Promise<void> {
    this.open[index]!.reject(error);
    return new Promise((resolve) => setImmediate(resolve));
  }
}

/** No rate limit: what the monitor does with RELEVO_COMMIT_WAIT_CHECKPOINT_INTERVAL_MS=0. */
const UNLIMITED = { checkpointIntervalMs: 0 };

const node1 = testNode("node1");
const node2 = testNode("node2");

describe("commits are known to wait for the synchronous set only after a checkpoint that followed the setting", () => {
  test("a set that went from empty is unconfirmed until the checkpoint requested after it finishes", async () => {
    const checkpoints = new Checkpoints();
    const commitWait = new CommitWaitConfirmation(checkpoints.run, UNLIMITED);
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
    const commitWait = new CommitWaitConfirmation(checkpoints.run, UNLIMITED);
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
    const commitWait = new CommitWaitConfirmation(checkpoints.run, UNLIMITED);
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
    const waited = new CommitWaitConfirmation(finishing.run, UNLIMITED);
    waited.request(node1);
    const settling = waited.settled(5000);
    await finishing.finish(0);
    await settling;
    expect(waited.confirmed("node1")).toBe(true);
    expect(finishing.aborted).toEqual([]);

    const hanging = new Checkpoints();
    const stopped = new CommitWaitConfirmation(hanging.run, UNLIMITED);
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

  test("a flapping standby gets at most one CHECKPOINT per interval; meanwhile a checkpoint found since the reload confirms", async () => {
    const checkpoints = new Checkpoints();
    let now = 1_000_000;
    const commitWait = new CommitWaitConfirmation(checkpoints.run, { checkpointIntervalMs: 30000, now: () => now });
    commitWait.request(node1);
    await checkpoints.finish(0, "checkpointed");
    expect(commitWait.confirmed("node1")).toBe(true);
    // The standby leaves (the set empties) and returns 5 s later: no second CHECKPOINT yet.
    now += 5000;
    commitWait.observe("node1", "");
    commitWait.request(node1);
    expect(checkpoints.allowed).toEqual([true, false]);
    await checkpoints.finish(1, "unconfirmed");
    expect(commitWait.confirmed("node1")).toBe(false);
    // Asked again next round, still within the interval: a checkpoint the server ran since the reload confirms.
    now += 1000;
    commitWait.request(node1);
    expect(checkpoints.allowed).toEqual([true, false, false]);
    await checkpoints.finish(2, "found-checkpoint");
    expect(commitWait.confirmed("node1")).toBe(true);
    // A found checkpoint does not count as one requested: the interval still runs from the first.
    commitWait.observe("node1", "");
    now += 20000; // 26 s after the CHECKPOINT
    commitWait.request(node1);
    await checkpoints.finish(3, "unconfirmed");
    now += 4000; // 30 s after it
    commitWait.request(node1);
    expect(checkpoints.allowed).toEqual([true, false, false, false, true]);
    // Another primary is never held back by this one's CHECKPOINT.
    commitWait.observe("node2", 'ANY 1 ("node1")');
    await checkpoints.finish(4, "checkpointed");
    commitWait.request(node2);
    expect(checkpoints.allowed.at(-1)).toBe(true);
    await checkpoints.finish(5, "checkpointed");
    expect(commitWait.confirmed("node2")).toBe(true);
  });

  test("a CHECKPOINT sent counts against the interval whatever became of it: failed, timed out or given up on stop", async () => {
    const checkpoints = new Checkpoints();
    let now = 1_000_000;
    const commitWait = new CommitWaitConfirmation(checkpoints.run, { checkpointIntervalMs: 30000, now: () => now });
    // Refused before any CHECKPOINT was sent (the primary did not answer): the next round may send one.
    commitWait.request(node1);
    await checkpoints.fail(0);
    now += 1000;
    commitWait.request(node1);
    expect(checkpoints.allowed).toEqual([true, true]);
    // Sent, then the statement timeout ends the wait: the server still checkpoints, so none again within the interval.
    checkpoints.issue(1);
    await checkpoints.fail(1, new Error("canceling statement due to statement timeout"));
    expect(commitWait.confirmed("node1")).toBe(false);
    now += 5000;
    commitWait.request(node1);
    expect(checkpoints.allowed).toEqual([true, true, false]);
    await checkpoints.finish(2, "unconfirmed");
    // 30 s after it was sent: another.
    now += 25000;
    commitWait.request(node1);
    expect(checkpoints.allowed).toEqual([true, true, false, true]);
    // Sent, then the monitor stops and ends its connection: started again, it does not send another at once.
    checkpoints.issue(3);
    await commitWait.settled(0);
    expect(checkpoints.aborted).toEqual(["node1"]);
    now += 1000;
    commitWait.request(node1);
    expect(checkpoints.allowed).toEqual([true, true, false, true, false]);
    await checkpoints.finish(4, "unconfirmed");
    expect(commitWait.confirmed("node1")).toBe(false);
  });

  test("a checkpoint confirms a reload only if it began at least two whole seconds after it (checkpoint_time is in seconds)", () => {
    const at = (iso: string) => new Date(iso);
    const reloadedAt = at("2026-12-06T10:00:10.999Z");
    // Possibly decided before the checkpointer had the reload pending: 11.000 is 1 ms later.
    expect(checkpointFollowedReload({ reloadedAt, checkpointStartedAt: at("2026-12-06T10:00:11Z") })).toBe(false);
    expect(checkpointFollowedReload({ reloadedAt, checkpointStartedAt: at("2026-12-06T10:00:10Z") })).toBe(false);
    expect(checkpointFollowedReload({ reloadedAt, checkpointStartedAt: at("2026-12-06T09:59:00Z") })).toBe(false);
    // Began at 12.000 or later: at least a second after the reload.
    expect(checkpointFollowedReload({ reloadedAt, checkpointStartedAt: at("2026-12-06T10:00:12Z") })).toBe(true);
    expect(checkpointFollowedReload({ reloadedAt: at("2026-12-06T10:00:10.000Z"), checkpointStartedAt: at("2026-12-06T10:00:12Z") })).toBe(
      true,
    );
  });
});
