import { readFile } from "node:fs/promises";
import { replaceFileDurably } from "../util/durable-file";
import path from "node:path";
import { z } from "zod";
import type { Repository } from "../storage/repository";
import { archiveIdentity } from "../wal/archive-identity";

/**
 * The cluster a data home belongs to, by PostgreSQL's system identifier
 * (drawn once by initdb, kept by every replica, backup and restore). Recorded
 * in the data home whenever Relevo runs a primary, so that a home whose nodes
 * were all lost still knows it had a cluster: `relevo up` must then rebuild
 * it (relevo restore --cluster), never initialise an empty one in its place.
 */
const IDENTITY_FILE = "cluster-identity.json";

const identitySchema = z.object({ cluster: z.string(), systemIdentifier: z.string(), recordedAt: z.string() });
export type RecordedIdentity = z.infer<typeof identitySchema>;

export function identityFile(home: string): string {
  return path.join(home, IDENTITY_FILE);
}

/** The identity recorded in the data home; null when none is (a new home, or one from before this record). */
export async function readRecordedIdentity(home: string): Promise<RecordedIdentity | null> {
  let text: string;
  try {
    text = await readFile(identityFile(home), "utf8");
  } catch {
    return null;
  }
  try {
    const parsed = identitySchema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : null;
  } catch {
    return null;
  }
}

/** Records the cluster's system identifier (temp + rename); false when it was recorded already. */
export async function recordIdentity(home: string, cluster: string, systemIdentifier: string): Promise<boolean> {
  const current = await readRecordedIdentity(home).catch(() => null);
  if (current?.systemIdentifier === systemIdentifier && current.cluster === cluster) return false;
  const record: RecordedIdentity = { cluster, systemIdentifier, recordedAt: new Date().toISOString() };
  const file = identityFile(home);
  await replaceFileDurably(file, JSON.stringify(record, null, 2) + "\n", { mode: 0o600 });
  return true;
}

/** What a data home knows of its cluster: the system identifier, and every sign of it found (for the refusal's message). */
export interface KnownCluster {
  readonly systemIdentifier: string | null;
  readonly evidence: readonly string[];
}

/**
 * Every sign that this data home already had a cluster: an identity
 * recorded in the home, WAL or backups in any repository. null: none, a new
 * home. Reads the repositories' manifests: call it only when a node would be
 * initialised.
 */
export async function knownCluster(home: string, repositories: readonly Repository[]): Promise<KnownCluster | null> {
  const evidence: string[] = [];
  const recorded = await readRecordedIdentity(home);
  if (recorded) evidence.push(`system identifier ${recorded.systemIdentifier} recorded in ${identityFile(home)}`);
  let archived: string | null = null;
  // Every repository's: a cluster whose first repository was emptied is still known by the others.
  for (const repository of repositories) {
    const archive = await archiveIdentity(repository);
    if (archive) {
      evidence.push(`system identifier ${archive.systemIdentifier} in ${archive.source} of the repository ${repository.location}`);
      archived ??= archive.systemIdentifier;
    }
    const backups = (await repository.listManifests()).filter((manifest) => manifest.status === "completed").length;
    if (backups > 0) evidence.push(`${backups} completed backup${backups === 1 ? "" : "s"} in ${repository.generationLocation}`);
  }
  if (evidence.length === 0) return null;
  return { systemIdentifier: recorded?.systemIdentifier ?? archived, evidence };
}

/** What `relevo up` may do when every node is without data. */
export type InitialisationDecision =
  | { readonly phase: "initialise" }
  /** The operator asked to start over: the repository's next generation is started first (the old one left, unread). */
  | { readonly phase: "start-over"; readonly known: KnownCluster }
  | { readonly phase: "refuse"; readonly message: string };

/**
 * A data home that knows its cluster never gets a new, empty one in its
 * place (it would be reported healthy while the real data sits in the
 * repository): only an explicit start-over initialises then. Pure.
 */
export function initialisationDecision(known: KnownCluster | null, options: { newCluster: boolean }): InitialisationDecision {
  if (known === null) return { phase: "initialise" };
  if (options.newCluster) return { phase: "start-over", known };
  return {
    phase: "refuse",
    message:
      `no node has data, but this data home already had a cluster (${known.evidence.join("; ")}): ` +
      `rebuild it from the repository with relevo restore --cluster, or, to discard it and start an empty cluster, ` +
      `run relevo up --new-cluster (the old backups and WAL archive are kept, not deleted, and no longer read)`,
  };
}
