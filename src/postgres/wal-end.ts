import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import { lsnFromNumber, lsnToNumber } from "./lsn";
import { readControlData } from "./control-data";

/**
 * Where a stopped node's WAL ends: pg_waldump reads its pg_wal from the last
 * checkpoint's redo point, record after record, until the first it cannot
 * read, and says where that is. A node killed mid-write ends at its last
 * complete record — what it had flushed, so every commit it acknowledged
 * lies before it. Null when it cannot be told (no control data, no WAL).
 * A node promoted after its last checkpoint is read along that
 * checkpoint's timeline only: never past its true end.
 */
export async function readEndOfWal(driver: NodeDriver, node: NodeRef, options: { timeoutMs: number }): Promise<string | null> {
  const control = await readControlData(driver, node, { allowFailure: true });
  const redo = /Latest checkpoint's REDO location:\s+([0-9A-F]+\/[0-9A-F]+)/.exec(control)?.[1];
  const timeline = /Latest checkpoint's TimeLineID:\s+(\d+)/.exec(control)?.[1];
  if (!redo || !timeline) return null;
  const walDirectory = `${driver.dataDirectory(node)}/pg_wal`;
  const result = await driver.exec(node, ["pg_waldump", "--quiet", "--path", walDirectory, "--timeline", timeline, "--start", redo], {
    mode: "offline",
    allowFailure: true,
    timeoutMs: options.timeoutMs,
  });
  return endOfWalIn(result.stderr, redo);
}

/**
 * pg_waldump's last word: "error in WAL record at <last record>: invalid
 * record length at <end>: …" — the furthest position it names, never
 * before where it started. Null when it names none.
 */
export function endOfWalIn(stderr: string, start: string): string | null {
  const line = stderr.split("\n").find((text) => text.includes("error in WAL record at"));
  if (!line) return null;
  const positions = [...line.matchAll(/\b([0-9A-F]{1,8}\/[0-9A-F]{1,8})\b/g)].map((match) => lsnToNumber(match[1]!));
  return lsnFromNumber(Math.max(lsnToNumber(start), ...positions));
}
