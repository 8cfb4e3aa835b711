import type { ClusterSnapshot } from "../cluster/topology";
import type { Logger } from "../log";
import type { NodeRef } from "../nodes/node-driver";
import type { Credentials } from "../postgres/connection";
import type { Repository } from "../storage/repository";
import type { BackupManifest } from "./manifest";
import { captureReferencePoint, type PauseMarker } from "./reference-point";
import { chooseReferenceReplica, type FailoverEligibility } from "./reference-source";

export interface ReferenceDeps {
  readonly repository: Repository;
  readonly superuser: Credentials;
  readonly logger: Logger;
  /** The latest topology: which replicas stream. */
  readonly topology: () => ClusterSnapshot | null;
  /** Which replicas a failover would promote now. */
  readonly failoverEligibility: () => Promise<FailoverEligibility>;
  /** How long a replica may take to replay up to the backup's stop. */
  readonly archiveTimeoutMs: number;
  /** Marks the replica while its replay is paused (see ReplayPauseMarkers). */
  readonly pauseMarker: PauseMarker;
}

const nodeRef = (snapshot: ClusterSnapshot, name: string): NodeRef => {
  const { host, port } = snapshot.nodes.find((node) => node.name === name)!;
  return { name, host, port };
};

/**
 * The reference point a restore test of `manifest` compares with: the one
 * recorded, else one taken now on a replica (see captureReferencePoint) and
 * recorded in the manifest, so that a later restore test of the backup uses
 * it again. Never on the primary: without a replica to pause, the restore
 * test checks with pg_amcheck only, and `missing` says why.
 */
export async function referencePointFor(
  deps: ReferenceDeps,
  manifest: BackupManifest,
): Promise<{ readonly manifest: BackupManifest; readonly missing: string | null }> {
  if (manifest.referencePoint) return { manifest, missing: null };
  const snapshot = deps.topology();
  const choice = chooseReferenceReplica(snapshot, await deps.failoverEligibility());
  if (!choice.ok || !snapshot?.primary) {
    const missing = `no reference point: ${choice.ok ? "no primary is known" : choice.reason}`;
    deps.logger.info({ id: manifest.id, missing }, "restore test without a reference point (pg_amcheck only)");
    return { manifest, missing };
  }
  try {
    const point = await captureReferencePoint({
      replica: nodeRef(snapshot, choice.node),
      primary: nodeRef(snapshot, snapshot.primary),
      credentials: deps.superuser,
      name: `relevo-${manifest.id}`,
      notBefore: manifest.stopLsn!,
      timeoutMs: deps.archiveTimeoutMs,
      marker: deps.pauseMarker,
    });
    const recorded: BackupManifest = { ...manifest, referencePoint: point };
    await deps.repository.writeManifest(recorded);
    deps.logger.info({ id: manifest.id, node: point.node, lsn: point.lsn, tables: point.tables.length }, "reference point recorded");
    return { manifest: recorded, missing: null };
  } catch (error) {
    const missing = `no reference point: taking it on ${choice.node} failed: ${(error as Error).message}`;
    deps.logger.warn({ id: manifest.id, missing }, "restore test without a reference point (pg_amcheck only)");
    return { manifest, missing };
  }
}
