import { readFile, readdir } from "node:fs/promises";

/** What /proc says about one process; null when it is gone (or a zombie). */
export interface ProcStat {
  readonly pid: number;
  readonly state: string; // R, S, D, T (stopped), Z ...
  readonly ppid: number;
  readonly pgid: number;
}

export async function readProcStat(pid: number): Promise<ProcStat | null> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, "utf8");
  } catch {
    return null;
  }
  // The command name is in parentheses and may contain spaces: parse after the last ')'.
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  const state = fields[0] ?? "?";
  if (state === "Z" || state === "X") return null;
  return { pid, state, ppid: Number(fields[1]), pgid: Number(fields[2]) };
}

export async function readCommandLine(pid: number): Promise<string> {
  try {
    return (await readFile(`/proc/${pid}/cmdline`, "utf8")).replace(/\0/g, " ").trim();
  } catch {
    return "";
  }
}

/** Every live process whose process group is `pgid`. */
export async function processesInGroup(pgid: number): Promise<number[]> {
  const entries = await readdir("/proc");
  const members: number[] = [];
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readProcStat(Number(entry));
    if (stat && stat.pgid === pgid) members.push(stat.pid);
  }
  return members;
}

/**
 * The process and every live descendant. PostgreSQL's backends and auxiliary
 * processes each call setsid(), so they are not in the postmaster's process
 * group: its children are found by parent pid.
 */
export async function processTree(rootPid: number): Promise<number[]> {
  const children = new Map<number, number[]>();
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readProcStat(Number(entry));
    if (!stat) continue;
    const siblings = children.get(stat.ppid) ?? [];
    siblings.push(stat.pid);
    children.set(stat.ppid, siblings);
  }
  const tree: number[] = [];
  const pending = [rootPid];
  while (pending.length > 0) {
    const pid = pending.pop()!;
    tree.push(pid);
    pending.push(...(children.get(pid) ?? []));
  }
  return tree;
}
