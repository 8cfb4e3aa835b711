import { execFile } from "node:child_process";
import type { NodeRef } from "../../src/nodes/node-driver";

const PSQL = "/usr/lib/postgresql/15/bin/psql";

export interface WriterReport {
  /** Ids whose INSERT was acknowledged (psql printed the returned id). */
  readonly acknowledged: number[];
  readonly attempts: number;
  readonly failures: number;
  /** Longest time between two acknowledged writes (ms). */
  readonly longestGapMs: number;
  /** Time of each acknowledgement (ms since epoch), in order. */
  readonly ackTimes: number[];
  /** When each acknowledged INSERT was started (its psql spawned), in order. */
  readonly ackStarts: number[];
}

/**
 * An application writing through libpq with a multi-host connection string
 * (target_session_attrs=read-write), as operators' clients would: one psql per
 * INSERT (a new connection each time, so it finds the new primary by itself),
 * logging every acknowledged id.
 */
export function startLibpqWriter(
  nodes: readonly NodeRef[],
  password: string,
  table = "acked",
): { stop(): Promise<WriterReport>; acknowledgedSoFar(): number } {
  const hosts = nodes.map((node) => `${node.host}:${node.port}`).join(",");
  const uri = `postgresql://postgres@${hosts}/postgres?target_session_attrs=read-write&connect_timeout=1`;
  let running = true;
  let attempts = 0;
  let failures = 0;
  const acknowledged: number[] = [];
  const ackTimes: number[] = [];
  const ackStarts: number[] = [];
  const insert = (id: number): Promise<boolean> =>
    new Promise((resolve) => {
      execFile(
        PSQL,
        [uri, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", `INSERT INTO ${table} (id) VALUES (${id}) RETURNING id`],
        { env: { ...process.env, PGPASSWORD: password }, timeout: 10000 },
        (error, stdout) => resolve(!error && stdout.trim() === String(id)),
      );
    });
  const done = (async () => {
    let next = 1;
    while (running) {
      const id = next++;
      attempts += 1;
      const startedAt = Date.now();
      if (await insert(id)) {
        acknowledged.push(id);
        ackTimes.push(Date.now());
        ackStarts.push(startedAt);
      } else {
        failures += 1;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
  })();
  return {
    acknowledgedSoFar: () => acknowledged.length,
    stop: async () => {
      running = false;
      await done;
      let longestGapMs = 0;
      for (let i = 1; i < ackTimes.length; i += 1) longestGapMs = Math.max(longestGapMs, ackTimes[i]! - ackTimes[i - 1]!);
      return { acknowledged, attempts, failures, longestGapMs, ackTimes, ackStarts };
    },
  };
}
