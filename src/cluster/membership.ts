import { readFile } from "node:fs/promises";
import { replaceFileDurably } from "../util/durable-file";
import path from "node:path";
import { z } from "zod";
import type { RelevoConfig } from "../config/config";
import { ErrorCode, RelevoError } from "../errors";
import type { NodeRef } from "../nodes/node-driver";
import { clusterMembers } from "./members";

const MEMBERSHIP_FILE = "members.json";

const nodeSchema = z.object({ name: z.string(), host: z.string(), port: z.number().int() });
const fileSchema = z.object({ added: z.array(nodeSchema), removed: z.array(z.string()) });
type MembershipChanges = z.infer<typeof fileSchema>;

/** Names a replica may take: they become application names, slot names and directory names. */
const NODE_NAME = /^[a-z][a-z0-9-]{0,30}$/;

export type MembershipConfig = Pick<RelevoConfig, "home" | "host" | "primaryPort" | "replicaPort" | "replicaCount">;

/**
 * The cluster's nodes: those the configuration names (node1 … nodeN), less
 * the replicas removed and plus those added since, which `<home>/members.json`
 * records. `nodes` is one list shared by every component (topology, backups,
 * failover), changed in place when a replica is added or removed.
 */
export class Membership {
  private constructor(
    private readonly config: MembershipConfig,
    private changes: MembershipChanges,
    readonly nodes: NodeRef[],
  ) {}

  static async load(config: MembershipConfig): Promise<Membership> {
    const changes = await readChanges(config.home);
    return new Membership(config, changes, membersOf(config, changes));
  }

  /**
   * Reads the recorded changes again (another service instance on the same
   * home may have added or removed a replica) and updates `nodes` in place.
   */
  async refresh(): Promise<void> {
    const changes = await readChanges(this.config.home);
    if (JSON.stringify(changes) === JSON.stringify(this.changes)) return;
    this.changes = changes;
    this.nodes.splice(0, this.nodes.length, ...membersOf(this.config, changes));
  }

  find(name: string): NodeRef | undefined {
    return this.nodes.find((node) => node.name === name);
  }

  /** A new member's NodeRef (not recorded yet): its name checked, the next port after every member's. */
  plan(name: string, port: number): NodeRef {
    if (!NODE_NAME.test(name)) {
      throw new RelevoError(
        ErrorCode.BadUserInput,
        `invalid node name "${name}": lower-case letters, digits and '-', starting with a letter, at most 31 characters`,
      );
    }
    if (this.find(name)) throw new RelevoError(ErrorCode.BadUserInput, `a node named "${name}" already exists`);
    return { name, host: this.config.host, port };
  }

  /** The lowest port above every member's. */
  nextPort(): number {
    return Math.max(this.config.replicaPort - 1, ...this.nodes.map((node) => node.port)) + 1;
  }

  async add(node: NodeRef): Promise<void> {
    this.changes = {
      added: [...this.changes.added.filter((n) => n.name !== node.name), node],
      removed: this.changes.removed.filter((n) => n !== node.name),
    };
    await writeChanges(this.config.home, this.changes);
    if (!this.find(node.name)) this.nodes.push(node);
  }

  async remove(name: string): Promise<void> {
    const configured = clusterMembers(this.config).some((node) => node.name === name);
    this.changes = {
      added: this.changes.added.filter((node) => node.name !== name),
      removed: configured ? [...new Set([...this.changes.removed, name])] : this.changes.removed,
    };
    await writeChanges(this.config.home, this.changes);
    const index = this.nodes.findIndex((node) => node.name === name);
    if (index >= 0) this.nodes.splice(index, 1);
  }
}

/** The members as the configuration and the recorded changes say, for commands that run without the service. */
export async function loadMembers(config: MembershipConfig): Promise<NodeRef[]> {
  return (await Membership.load(config)).nodes;
}

function membersOf(config: MembershipConfig, changes: MembershipChanges): NodeRef[] {
  const removed = new Set(changes.removed);
  const nodes = clusterMembers(config).filter((node) => !removed.has(node.name));
  for (const node of changes.added) if (!nodes.some((n) => n.name === node.name)) nodes.push(node);
  return nodes;
}

async function readChanges(home: string): Promise<MembershipChanges> {
  let raw: string;
  try {
    raw = await readFile(path.join(home, MEMBERSHIP_FILE), "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return { added: [], removed: [] };
    throw error;
  }
  const parsed = fileSchema.safeParse(JSON.parse(raw));
  if (!parsed.success) {
    throw new RelevoError(
      ErrorCode.InvalidConfig,
      `${path.join(home, MEMBERSHIP_FILE)} is not a valid membership file: ${parsed.error.issues[0]?.message}`,
    );
  }
  return parsed.data;
}

async function writeChanges(home: string, changes: MembershipChanges): Promise<void> {
  const file = path.join(home, MEMBERSHIP_FILE);
  await replaceFileDurably(file, JSON.stringify(changes, null, 2) + "\n", { mode: 0o600 });
}
