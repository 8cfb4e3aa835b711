import { runAddReplica, runRemoveReplica } from "../cluster/replicas";
import { runFailover } from "./failover";
import type { OperationContext } from "./operation-context";
import type { RunningOperation } from "./operation-journal";
import { runRejoin } from "./rejoin";
import { runReseed } from "./reseed";
import { runSwitchover } from "./switchover";

/**
 * Runs an operation adopted from a dead instance's journal to its end, from
 * the stage it reached: every step of every operation is idempotent, so what
 * the dead instance did already is done again harmlessly or skipped.
 */
export async function resumeOperation(context: OperationContext, operation: RunningOperation): Promise<void> {
  const { logger } = context.deps;
  logger.warn(
    { operation: operation.entry.id, kind: operation.entry.kind, stage: operation.entry.stage },
    "resuming an operation another instance left unfinished",
  );
  const run = async (): Promise<unknown> => {
    switch (operation.entry.kind) {
      case "failover":
        return runFailover(context, operation);
      case "switchover":
      case "failback":
        return runSwitchover(context, operation);
      case "rejoin":
        return runRejoin(context, operation);
      case "add-replica":
        return runAddReplica(context, operation);
      case "remove-replica":
        return runRemoveReplica(context, operation);
      case "reseed":
        return runReseed(context, operation);
    }
  };
  await context
    .tracked(operation, run)
    .catch((error: Error) => logger.error({ operation: operation.entry.id, err: error.message }, "resumed operation failed"));
}
