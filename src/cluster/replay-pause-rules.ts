import type { ClusterSnapshot } from "./topology";

/**
 * How long a replica may be seen paused with no capture holding it before
 * its replay is resumed. A capture marks the replica before it pauses and
 * clears the mark after it resumed, so an unmarked pause is never a capture
 * at work; the grace only keeps a poll that caught a capture's last moment
 * (paused, mark just cleared) from counting.
 */
export const UNHELD_PAUSE_GRACE_MS = 2000;

/** The reachable replicas whose replay is paused or has a pause requested. Pure. */
export function pausedReplicas(snapshot: ClusterSnapshot | null): string[] {
  return (snapshot?.nodes ?? [])
    .filter((node) => node.reachable && node.role === "replica" && (node.replication?.replayPause ?? "not paused") !== "not paused")
    .map((node) => node.name);
}

export interface UnheldPauseInput {
  /** From pausedReplicas: the replicas paused now. */
  readonly paused: readonly string[];
  /** Those of them a capture holds (its marker is in Redis). */
  readonly held: ReadonlySet<string>;
  /** When each replica was first seen paused and unheld, in earlier rounds. */
  readonly seenSince: ReadonlyMap<string, number>;
  readonly now: number;
  readonly graceMs: number;
  /** Maintenance mode: an operator may hold replay paused on purpose; nothing is resumed. */
  readonly maintenance: boolean;
}

/**
 * Pure. Which paused replicas to resume: paused, held by no capture, and
 * seen so for `graceMs` or longer. A replica no longer paused, or held, is
 * forgotten: its time starts again when it is next seen paused and unheld.
 */
export function unheldReplayPauses(input: UnheldPauseInput): { readonly seenSince: Map<string, number>; readonly resume: string[] } {
  const seenSince = new Map<string, number>();
  if (input.maintenance) return { seenSince, resume: [] };
  for (const name of input.paused) {
    if (!input.held.has(name)) seenSince.set(name, input.seenSince.get(name) ?? input.now);
  }
  const resume = [...seenSince].filter(([, since]) => input.now - since >= input.graceMs).map(([name]) => name);
  return { seenSince, resume };
}
