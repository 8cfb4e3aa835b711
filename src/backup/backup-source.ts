import type { ClusterSnapshot } from "../cluster/topology";
import { ErrorCode, RelevoError } from "../errors";

export type BackupSourcePolicy = "primary" | "replica" | "prefer-replica";

/**
 * The node a backup is copied from. Pure. A replica qualifies when it is
 * reachable, streaming, and lags less than `maxLagBytes` (a lagging replica's
 * copy would need more WAL and end further behind); the least lagging one
 * wins. `prefer-replica` falls back to the primary, `replica` does not.
 */
export function chooseBackupSource(
  snapshot: ClusterSnapshot | null,
  policy: BackupSourcePolicy,
  maxLagBytes: number,
): { node: string; fromReplica: boolean } {
  if (!snapshot?.primary) throw new RelevoError(ErrorCode.ServiceUnavailable, "no primary is known: cannot take a backup now");
  if (policy === "primary") return { node: snapshot.primary, fromReplica: false };
  const candidates = snapshot.nodes
    .filter((node) => node.reachable && node.role === "replica" && node.replication?.state === "streaming")
    .filter((node) => (node.replication?.lagBytes ?? Infinity) <= maxLagBytes)
    .sort((a, b) => (a.replication?.lagBytes ?? 0) - (b.replication?.lagBytes ?? 0));
  const best = candidates[0];
  if (best) return { node: best.name, fromReplica: true };
  if (policy === "prefer-replica") return { node: snapshot.primary, fromReplica: false };
  throw new RelevoError(
    ErrorCode.PreconditionFailed,
    `RELEVO_BACKUP_SOURCE=replica but no replica is streaming within ${maxLagBytes} bytes of lag`,
  );
}
