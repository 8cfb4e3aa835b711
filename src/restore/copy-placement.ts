import path from "node:path";
import { ErrorCode, RelevoError } from "../errors";
import type { NodeProcessState, NodeRef } from "../nodes/node-driver";

/**
 * Where a restored copy may go, and what a directory must hold for `restore
 * stop` to touch it. Pure: the callers read the facts (members, the node's
 * state, its marker) and act on the verdict.
 */

/**
 * A copy never takes a member's port, even a stopped member's: the topology,
 * the failover monitor and every client find the member by its port, and a
 * copy answering there would look like that member (a second primary, to be
 * fenced; a replica's place taken). The target itself may be a member (a
 * disaster recovery restores node1 onto node1's port).
 */
export function assertNoMemberPort(members: readonly NodeRef[], target: NodeRef): void {
  const member = members.find((node) => node.port === target.port && node.name !== target.name);
  if (!member) return;
  throw new RelevoError(
    ErrorCode.PortInUse,
    `port ${target.port} is ${member.name}'s, a member of the cluster (even while it is stopped): ` +
      `a restored copy never takes a member's port; choose another port`,
    { details: { port: target.port, member: member.name } },
  );
}

/**
 * A copy made in a directory of this host (`relevo restore --to`) never goes
 * into a member's node directory, nor inside it, nor around it: the member's
 * own seed (a reseed destroys it first, so it may be absent) would write
 * into the same place, claiming the same lock file, and whichever failed
 * would destroy the other's files; and a failed restore removes its whole
 * directory. `directory` and each member's are real paths (resolveRealPath),
 * so no spelling (a link, `..`) slips past. Pure.
 */
export function assertNotMemberDirectory(
  directory: string,
  members: ReadonlyArray<{ readonly name: string; readonly directory: string }>,
): void {
  const within = (inner: string, outer: string): boolean =>
    inner === outer || inner.startsWith(outer.endsWith(path.sep) ? outer : outer + path.sep);
  const member = members.find((candidate) => within(directory, candidate.directory) || within(candidate.directory, directory));
  if (!member) return;
  const where = directory === member.directory ? "is" : within(directory, member.directory) ? "is inside" : "holds";
  throw new RelevoError(
    ErrorCode.TargetIsMember,
    `${directory} ${where} the node directory of ${member.name}, a member of the cluster (${member.directory}): ` +
      `a restored copy never goes there; choose another directory; nothing was written`,
    { details: { directory, member: member.name } },
  );
}

/**
 * Whether a restore may write into its target as found: only into a node
 * that does not exist (whatever is there is someone's, and a failed restore
 * removes its target). The one exception, asked for explicitly by disaster
 * recovery alone: storage that exists with an empty data directory and no
 * server, which is what is left of a lost node in a container Relevo
 * adopted (docker compose made it; destroy() empties its volume and leaves
 * it). Pure.
 */
export function restoreTargetAccepted(facts: {
  readonly phase: NodeProcessState["phase"];
  /** The data directory's entries, when the storage exists (null: not looked at). */
  readonly dataEntries: number | null;
  readonly acceptEmptyStorage: boolean;
}): boolean {
  if (facts.phase === "absent") return true;
  return facts.acceptEmptyStorage && facts.phase === "stopped" && facts.dataEntries === 0;
}

/** Relevo's marker in a data directory, as far as `restore stop` needs it. */
export interface MarkerFacts {
  readonly node: string;
  /** The backup a restore made it from; absent on a node Relevo initialised or seeded. */
  readonly restoredFrom?: string;
}

/**
 * Whether `restore stop` may stop what runs in a directory: only a restored
 * copy (its marker says it was restored) that is not a member (a disaster
 * recovery restores members too). A member's directory, or one without
 * Relevo's marker, is refused: stopping it would stop a node of a cluster.
 */
export function assertRestoredCopy(directory: string, marker: MarkerFacts | null, members: readonly NodeRef[]): void {
  const member = marker ? members.find((node) => node.name === marker.node) : undefined;
  if (marker?.restoredFrom && !member) return;
  const what = member
    ? `the data directory of ${member.name}, a member of the cluster`
    : marker
      ? `the data directory of node ${marker.node}, not a restored copy`
      : "not a restored copy (it has no Relevo marker)";
  throw new RelevoError(
    ErrorCode.NotARestoredCopy,
    `${directory} is ${what}: relevo restore stop only stops copies made by relevo restore --to; nothing was stopped`,
    { details: { directory } },
  );
}

/** The marker file's content as MarkerFacts; null when absent or not Relevo's. */
export function parseMarkerFacts(content: Buffer | null): MarkerFacts | null {
  if (content === null) return null;
  try {
    const value = JSON.parse(content.toString("utf8")) as { node?: unknown; restoredFrom?: unknown };
    if (typeof value.node !== "string") return null;
    return typeof value.restoredFrom === "string" ? { node: value.node, restoredFrom: value.restoredFrom } : { node: value.node };
  } catch {
    return null;
  }
}
