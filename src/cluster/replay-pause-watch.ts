import type Redis from "ioredis";
import type { EventLog } from "../events/event-log";
import type { Logger } from "../log";
import type { NodeRef } from "../nodes/node-driver";
import { withNodeClient, type Credentials } from "../postgres/connection";
import { replayPauseState, resumeReplay } from "../postgres/replay-pause";
import type { ReplayPauseMarkers } from "./replay-pause-markers";
import { pausedReplicas, unheldReplayPauses, UNHELD_PAUSE_GRACE_MS } from "./replay-pause-rules";
import type { ClusterSnapshot } from "./topology";

export interface ReplayPauseWatchDeps {
  readonly nodes: readonly NodeRef[];
  readonly superuser: Credentials;
  readonly redis: Redis;
  readonly maintenanceKey: string;
  readonly markers: ReplayPauseMarkers;
  readonly events: EventLog;
  readonly logger: Logger;
  /** The latest topology snapshot: each replica's replay pause state. */
  readonly topology: () => ClusterSnapshot | null;
  /** Whether this instance leads (holds the failover monitor's lease): only the leader resumes. */
  readonly leading: () => boolean;
  readonly intervalMs: number;
  readonly nodeTimeoutMs: number;
  readonly graceMs?: number;
}

/**
 * Resumes WAL replay on a replica left paused. A reference point's capture
 * pauses a replica for a moment; if its service dies before it resumes, the
 * replica would stay paused for good: it keeps receiving WAL but applies
 * none, its readers see ever older data, and a failover to it first replays
 * everything it held back. In the leading instance, each round looks at the
 * replicas the topology saw paused; one that no capture marks (see
 * ReplayPauseMarkers) and that stays so past the grace is asked again, and
 * resumed, with a node:replay-resumed event.
 */
export class ReplayPauseWatch {
  private timer: NodeJS.Timeout | null = null;
  private round: Promise<void> = Promise.resolve();
  private running = false;
  private seenSince = new Map<string, number>();

  constructor(private readonly deps: ReplayPauseWatchDeps) {}

  start(): void {
    if (this.running) return;
    this.running = true;
    const loop = (): void => {
      if (!this.running) return;
      this.round = this.check()
        .catch((error: Error) => this.deps.logger.warn({ err: error.message }, "replay pause watch round failed"))
        .finally(() => {
          if (this.running) this.timer = setTimeout(loop, this.deps.intervalMs);
        });
    };
    loop();
  }

  async stop(): Promise<void> {
    this.running = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.round;
  }

  /** One round: the decision over the latest snapshot, then the resumes it calls for. */
  async check(): Promise<void> {
    const paused = this.deps.leading() ? pausedReplicas(this.deps.topology()) : [];
    if (paused.length === 0) {
      this.seenSince.clear();
      return;
    }
    const held = new Set<string>();
    for (const name of paused) if (await this.deps.markers.held(name)) held.add(name);
    const maintenance = (await this.deps.redis.get(this.deps.maintenanceKey)) === "1";
    const now = Date.now();
    const decision = unheldReplayPauses({
      paused,
      held,
      seenSince: this.seenSince,
      now,
      graceMs: this.deps.graceMs ?? UNHELD_PAUSE_GRACE_MS,
      maintenance,
    });
    this.seenSince = decision.seenSince;
    for (const name of decision.resume) {
      const node = this.deps.nodes.find((candidate) => candidate.name === name);
      if (node) await this.resumeUnheld(node, now - decision.seenSince.get(name)!);
    }
  }

  /**
   * Asked again, in this order: the node's own state first, then the mark. A
   * capture marks before it pauses, so a pause read before the mark was found
   * absent is not a capture's that began meanwhile.
   */
  private async resumeUnheld(node: NodeRef, pausedForMs: number): Promise<void> {
    const resumed = await withNodeClient(node, this.deps.superuser, this.deps.nodeTimeoutMs, async (client) => {
      const state = await replayPauseState(client);
      if (state === "not paused" || (await this.deps.markers.held(node.name))) return null;
      await resumeReplay(client);
      return state;
    });
    this.seenSince.delete(node.name);
    if (resumed === null) return;
    await this.deps.events.emit({
      kind: "node:replay-resumed",
      severity: "warning",
      node: node.name,
      message: `${node.name}'s WAL replay was left ${resumed} for ${Math.round(pausedForMs / 1000)} s or more with no reference point being taken: resumed`,
      data: { state: resumed, pausedForMs },
    });
  }
}
