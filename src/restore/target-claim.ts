import { mkdir } from "node:fs/promises";
import path from "node:path";
import { ErrorCode, RelevoError, isRelevoError } from "../errors";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import { acquireFileLock, type HeldFileLock } from "../storage/file-lock";

export interface TargetClaimOptions {
  /** What the claim is for, shown to whoever finds it held ("restore into copy1", "add replica node4"). */
  readonly purpose: string;
  /**
   * How long to wait for another holder (default 0: refused at once). A
   * journaled addition resumed by another instance waits out its dead
   * runner's claim (see file-lock: a dead holder on another host is known by
   * its untouched file).
   */
  readonly waitMs?: number;
}

/**
 * Claims a node's name for the one process that is about to make it (a
 * restored copy through the API or the CLI, a verification's scratch node, a
 * new replica), from the check that nothing is there until the node is made:
 * without it, two makers of one new name both find it absent, write into the
 * same storage, and the one that fails destroys the other's. The claim is
 * the lock file the driver names beside the node's storage
 * (NodeDriver.claimFile), created exclusively, held until released, broken
 * when its holder died. A claim held by another is TARGET_NOT_EMPTY naming
 * the holder; nothing is touched.
 */
export async function claimNodeTarget(driver: NodeDriver, node: NodeRef, options: TargetClaimOptions): Promise<HeldFileLock> {
  const file = driver.claimFile(node);
  await mkdir(path.dirname(file), { recursive: true });
  try {
    return await acquireFileLock(file, { purpose: options.purpose, waitMs: options.waitMs ?? 0 });
  } catch (error) {
    if (!(isRelevoError(error) && error.code === ErrorCode.LockHeld)) throw error;
    const holder = error.details.holder as { pid: number; host: string; purpose: string };
    throw new RelevoError(
      ErrorCode.TargetNotEmpty,
      `${node.name} (data in ${driver.dataDirectory(node)}) is being made by another process, pid ${holder.pid} on ${holder.host} ` +
        `(${holder.purpose}): nothing was touched; choose another name, or retry once it is done`,
      { details: { target: node.name, claimFile: file, holder } },
    );
  }
}

/**
 * Runs `work` while `node`'s name is claimed (see claimNodeTarget); `claimed`
 * is a claim the caller took already. `work` gets the claim, to hand on to
 * what it calls (seedReplica), which would otherwise claim the name again.
 */
export async function withClaimedTarget<T>(
  driver: NodeDriver,
  node: NodeRef,
  options: TargetClaimOptions & { readonly claimed?: HeldFileLock },
  work: (claim: HeldFileLock) => Promise<T>,
): Promise<T> {
  const claim = options.claimed ?? (await claimNodeTarget(driver, node, options));
  try {
    return await work(claim);
  } finally {
    // A claim the caller took is the caller's to release.
    if (!options.claimed) await claim.release();
  }
}
