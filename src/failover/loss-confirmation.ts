import type { NodeRef } from "../nodes/node-driver";
import type { Credentials } from "../postgres/connection";
import { readNodePosition } from "../postgres/node-facts";
import { replicasConfirmLoss, type LossVerdict, type MemberAnswer } from "./monitor-rules";

/**
 * Asks every member but the recorded primary where it stands — fenced ones
 * too, since the recorded state may be the stale one — and judges whether
 * they confirm its loss (see replicasConfirmLoss), with what each said. The
 * monitor's question, and an operation's that finds the primary it just
 * promoted gone.
 */
export async function membersConfirmLoss(options: {
  readonly primary: NodeRef;
  readonly nodes: readonly NodeRef[];
  readonly fenced: readonly string[];
  readonly superuser: Credentials;
  readonly clusterName: string;
  /** A sender heard from within this long is alive (the detection window). */
  readonly liveWithinMs: number;
  readonly timeoutMs: number;
}): Promise<LossVerdict & { readonly members: readonly MemberAnswer[] }> {
  const { primary } = options;
  const members = await Promise.all(
    options.nodes
      .filter((node) => node.name !== primary.name)
      .map(async (node) => ({
        node,
        fenced: options.fenced.includes(node.name),
        position: await readNodePosition(node, options.superuser, options.timeoutMs, options.clusterName),
      })),
  );
  return { ...replicasConfirmLoss({ primary, members, liveWithinMs: options.liveWithinMs }), members };
}
