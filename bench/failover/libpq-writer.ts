import { uriTlsParameters } from "../../src/postgres/tls-settings";
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
  /** The port of the node that acknowledged each INSERT, in order. */
  readonly ackPorts: number[];
}

/**
 * An application writing through libpq with a multi-host connection string
 * (target_session_attrs=read-write), as operators' clients would: one psql per
 * INSERT (a new connection each time, so it finds the new primary by itself),
 * logging every acknowledged id.
 */
export function startLibpqWriter(
  cluster: {
    readonly nodes: readonly NodeRef[];
    readonly secrets: { readonly superuserPassword: string };
    /** The CA's certificate file: every connection verify-full, as `relevo url` prints it. */
    readonly caFile: string;
  },
  table = "acked",
): { stop(): Promise<WriterReport>; acknowledgedSoFar(): number; firstAckFrom(port: number, since: number): number | null } {
  const password = cluster.secrets.superuserPassword;
  const hosts = cluster.nodes.map((node) => `${node.host}:${node.port}`).join(",");
  const tls = new URLSearchParams(uriTlsParameters(cluster.caFile)).toString();
  const uri = `postgresql://postgres@${hosts}/postgres?target_session_attrs=read-write&connect_timeout=1&${tls}`;
  let running = true;
  let attempts = 0;
  let failures = 0;
  const acknowledged: number[] = [];
  const ackTimes: number[] = [];
  const ackStarts: number[] = [];
  const ackPorts: number[] = [];
  /** The port of the node that acknowledged the INSERT, or null when it was not acknowledged. */
  const insert = (id: number): Promise<number | null> =>
    new Promise((resolve) => {
      execFile(
        PSQL,
        [uri, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", `INSERT INTO ${table} (id) VALUES (${id}) RETURNING id, current_setting('port')`],
        { env: { ...process.env, PGPASSWORD: password }, timeout: 10000 },
        (error, stdout) => {
          const [acknowledged, port] = stdout.trim().split("|");
          resolve(!error && acknowledged === String(id) ? Number(port) : null);
        },
      );
    });
  const done = (async () => {
    let next = 1;
    while (running) {
      const id = next++;
      attempts += 1;
      const startedAt = Date.now();
      const port = await insert(id);
      if (port !== null) {
        acknowledged.push(id);
        ackTimes.push(Date.now());
        ackStarts.push(startedAt);
        ackPorts.push(port);
      } else {
        failures += 1;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
  })();
  return {
    acknowledgedSoFar: () => acknowledged.length,
    /** When the node on `port` first acknowledged an INSERT started at or after `since` (ms since epoch), or null. */
    firstAckFrom: (port, since) => {
      const index = ackPorts.findIndex((from, i) => from === port && ackStarts[i]! >= since);
      return index === -1 ? null : ackTimes[index]!;
    },
    stop: async () => {
      running = false;
      await done;
      let longestGapMs = 0;
      for (let i = 1; i < ackTimes.length; i += 1) longestGapMs = Math.max(longestGapMs, ackTimes[i]! - ackTimes[i - 1]!);
      return { acknowledged, attempts, failures, longestGapMs, ackTimes, ackStarts, ackPorts };
    },
  };
}
