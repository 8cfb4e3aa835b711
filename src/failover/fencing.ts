import { markFenced } from "../postgres/fence-marker";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";

export type FenceMethod = "absent" | "already-stopped" | "stopped" | "killed";

/**
 * Makes sure a node takes no write: stopped through the driver (immediate
 * shutdown: a failed primary has nothing worth flushing that a replica does
 * not have), killed with its whole process group when the stop is not
 * honoured or the server is frozen (a SIGSTOPped postmaster queues every
 * signal but SIGKILL), confirmed dead. Then, its data directory being
 * reachable, left read-only should anything start it again
 * (default_transaction_read_only: read-write clients see it and move on) and
 * marked fenced, so Relevo itself never starts it as it is. Idempotent.
 */
export async function fenceNode(
  driver: NodeDriver,
  node: NodeRef,
  reason: string,
  logger: Logger,
  stopTimeoutMs = 5000,
): Promise<FenceMethod> {
  const before = await driver.state(node);
  let method: FenceMethod;
  switch (before.phase) {
    case "absent":
      return "absent";
    case "stopped":
      method = "already-stopped";
      break;
    case "paused":
      await driver.kill(node);
      method = "killed";
      break;
    case "running":
      try {
        await driver.stop(node, { mode: "immediate", timeoutMs: stopTimeoutMs });
        method = "stopped";
      } catch (error) {
        logger.warn({ node: node.name, err: (error as Error).message }, "stop not honoured: killing the node's processes");
        await driver.kill(node);
        method = "killed";
      }
      break;
  }
  const after = await driver.state(node);
  if (after.phase === "running" || after.phase === "paused") {
    await driver.kill(node);
    const last = await driver.state(node);
    if (last.phase === "running" || last.phase === "paused") {
      throw new RelevoError(
        ErrorCode.CommandFailed,
        `node ${node.name} could not be fenced: its server (pid ${last.pid}) survived stop and kill`,
      );
    }
    method = "killed";
  }
  await markFenced(driver, node, reason);
  return method;
}
