import { ErrorCode, RelevoError } from "../errors";
import type { DataKey } from "./object-codec";
import { REPOSITORY_DESCRIPTOR_KEY } from "./repository-layout";
import type { ObjectStore } from "./object-store";
import type { RepositoryStore } from "./repository-store";

/**
 * What a repository is, `repository.json` (repository-layout's
 * REPOSITORY_DESCRIPTOR_KEY): which generation of clusters Relevo reads and
 * writes there. Absent in every repository no cluster started over in:
 * generation 0, whose keys have no prefix.
 *
 * It is a repository object like the others, read through the repository's
 * store, so it is encrypted in an encrypted repository (under the archive's
 * data key). It can be: the keyring (`keys/`) is read before it and lives
 * outside every generation. And it should be: encrypted means
 * authenticated, so that whoever can write the bucket cannot point Relevo
 * at a generation of their making (one without the backups, which `relevo
 * up` would then take for a repository with no cluster).
 *
 * Authenticated is not fresh: an older descriptor Relevo wrote, put back,
 * reads as valid. So the generation's cluster is recorded in it once its
 * first primary is known (`systemIdentifier`), and every open compares it
 * with the cluster the data home recorded (cluster-identity): a descriptor
 * of another cluster's generation is REPOSITORY_CLUSTER_MISMATCH. And a
 * deleted one is noticed by the later generations' prefixes it leaves
 * (assertGenerationsDescribed), never read as generation 0.
 */
export interface RepositoryDescriptor {
  readonly format: 1;
  /** The generation read and written: 0 for the first cluster, N for the cluster started over the Nth time (`g<N>/`). */
  readonly generation: number;
  /**
   * The system identifier of the cluster the generation belongs to: written
   * by the service once the generation's first primary is known (absent
   * until then, and in descriptors of earlier versions).
   */
  readonly systemIdentifier?: string;
}

/** A stored descriptor checked: REPOSITORY_CORRUPT naming the repository for anything Relevo did not write. Pure. */
export function parseRepositoryDescriptor(value: unknown, location: string): RepositoryDescriptor {
  const candidate = (typeof value === "object" && value !== null ? value : {}) as Record<string, unknown>;
  // Other fields are ignored (`legacy`, documented once and never written, among them): what Relevo reads is checked.
  const { format, generation, systemIdentifier } = candidate;
  const valid =
    format === 1 &&
    typeof generation === "number" &&
    Number.isSafeInteger(generation) &&
    generation >= 0 &&
    (systemIdentifier === undefined || (typeof systemIdentifier === "string" && /^[0-9]{1,20}$/.test(systemIdentifier)));
  if (!valid) {
    throw new RelevoError(ErrorCode.RepositoryCorrupt, `${location}: ${REPOSITORY_DESCRIPTOR_KEY} is not a descriptor Relevo can read`, {
      details: { repository: location, key: REPOSITORY_DESCRIPTOR_KEY },
    });
  }
  return { format: 1, generation, ...(systemIdentifier === undefined ? {} : { systemIdentifier }) };
}

/**
 * The descriptor of a new generation after `current` (null: none stored,
 * generation 0): the next number, and nothing of the previous cluster's
 * (its system identifier belongs to it). Pure.
 */
export function nextGeneration(current: RepositoryDescriptor | null): RepositoryDescriptor {
  return { format: 1, generation: (current?.generation ?? 0) + 1 };
}

/**
 * The repository's descriptor; null when it has none (generation 0). One
 * that cannot be read, or fails its checks, is an error
 * (REPOSITORY_UNAVAILABLE, _CORRUPT, _ACCESS_DENIED): taken for absent, it
 * would make Relevo read and write the first cluster's generation.
 */
export async function readRepositoryDescriptor(objects: RepositoryStore): Promise<RepositoryDescriptor | null> {
  const stored = await objects.readJson<unknown>(REPOSITORY_DESCRIPTOR_KEY);
  return stored === null ? null : parseRepositoryDescriptor(stored, objects.location);
}

export async function writeRepositoryDescriptor(
  objects: RepositoryStore,
  descriptor: RepositoryDescriptor,
  options: { readonly dataKey: DataKey | undefined },
): Promise<void> {
  await objects.writeJson(REPOSITORY_DESCRIPTOR_KEY, descriptor, { dataKey: options.dataKey });
}

/** What recording a primary's system identifier in the descriptor comes to (see identityRecording). */
export type IdentityRecording =
  | { readonly phase: "write"; readonly descriptor: RepositoryDescriptor }
  | { readonly phase: "recorded" }
  /** The stored descriptor names another cluster, or another generation than the one this process opened: left as it is. */
  | { readonly phase: "conflict"; readonly reason: string };

/**
 * Whether `systemIdentifier`, the primary of the cluster writing
 * `generation`, is written into the stored descriptor (null: none, which
 * is generation 0's): once, never over another cluster's, and only into
 * the generation this process reads and writes. Pure.
 */
export function identityRecording(
  stored: RepositoryDescriptor | null,
  options: { readonly generation: number; readonly systemIdentifier: string },
): IdentityRecording {
  const { generation, systemIdentifier } = options;
  const current = stored ?? { format: 1, generation: 0 };
  if (current.generation !== generation) {
    return { phase: "conflict", reason: `${REPOSITORY_DESCRIPTOR_KEY} names generation ${current.generation}, not ${generation}` };
  }
  if (current.systemIdentifier === undefined) return { phase: "write", descriptor: { ...current, systemIdentifier } };
  if (current.systemIdentifier === systemIdentifier) return { phase: "recorded" };
  return {
    phase: "conflict",
    reason: `${REPOSITORY_DESCRIPTOR_KEY} records system identifier ${current.systemIdentifier}, not ${systemIdentifier}`,
  };
}

/**
 * Refuses a descriptor of another cluster than the one the data home
 * recorded (`recorded`: its system identifier, null when it recorded none):
 * a repository of another cluster (RELEVO_REPO<n>_PATH pointed elsewhere),
 * or an older descriptor put back (a generation before a start-over).
 * Either would make Relevo list, restore and expire another cluster's
 * backups as this one's. Nothing to compare (either side unknown) passes.
 * Pure.
 */
export function assertDescriptorOfCluster(
  descriptor: RepositoryDescriptor | null,
  recorded: { readonly systemIdentifier: string; readonly file: string } | null,
  location: string,
): void {
  const stored = descriptor?.systemIdentifier;
  if (stored === undefined || recorded === null || stored === recorded.systemIdentifier) return;
  throw new RelevoError(
    ErrorCode.RepositoryClusterMismatch,
    `${location}: ${REPOSITORY_DESCRIPTOR_KEY} (generation ${descriptor!.generation}) belongs to the cluster with system ` +
      `identifier ${stored}, but this data home's cluster is ${recorded.systemIdentifier} (${recorded.file}): the repository ` +
      `is another cluster's, or its ${REPOSITORY_DESCRIPTOR_KEY} was replaced by an older one; point RELEVO_REPO1_PATH at ` +
      `this cluster's repository, or put back the descriptor of its current generation`,
    {
      details: {
        repository: location,
        key: REPOSITORY_DESCRIPTOR_KEY,
        generation: descriptor!.generation,
        repositoryCluster: stored,
        homeCluster: recorded.systemIdentifier,
      },
    },
  );
}

/**
 * Refuses a repository without a descriptor that holds a later
 * generation's objects (`g<N>/`): its descriptor was deleted, and
 * generation 0 read in its place would be an older cluster's backups.
 * One listing, stopped at the first such key.
 */
export async function assertGenerationsDescribed(store: ObjectStore): Promise<void> {
  for await (const found of store.list("g")) {
    const generation = /^g([1-9][0-9]*)\//.exec(found.key)?.[1];
    if (generation === undefined) continue;
    throw new RelevoError(
      ErrorCode.RepositoryCorrupt,
      `${store.location}: ${REPOSITORY_DESCRIPTOR_KEY} is missing but the repository holds generation ${generation} ` +
        `(g${generation}/): it was deleted, and is never taken for generation 0; put back the descriptor of the current ` +
        `generation (a copy of it: Relevo does not guess which generation is current)`,
      { details: { repository: store.location, key: REPOSITORY_DESCRIPTOR_KEY, generation: Number(generation) } },
    );
  }
}
