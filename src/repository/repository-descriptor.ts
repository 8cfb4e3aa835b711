import { ErrorCode, RelevoError } from "../errors";
import type { DataKey } from "./object-codec";
import { REPOSITORY_DESCRIPTOR_KEY } from "./repository-layout";
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
 */
export interface RepositoryDescriptor {
  readonly format: 1;
  /** The generation read and written: 0 for the first cluster, N for the cluster started over the Nth time (`g<N>/`). */
  readonly generation: number;
  /** The system identifier of the cluster the generation belongs to, when known. */
  readonly systemIdentifier?: string;
  /** Whether content from before objects (read by path) may be left: generation 0 only. */
  readonly legacy?: boolean;
}

/** A stored descriptor checked: REPOSITORY_CORRUPT naming the repository for anything Relevo did not write. Pure. */
export function parseRepositoryDescriptor(value: unknown, location: string): RepositoryDescriptor {
  const candidate = (typeof value === "object" && value !== null ? value : {}) as Record<string, unknown>;
  const { format, generation, systemIdentifier, legacy } = candidate;
  const valid =
    format === 1 &&
    typeof generation === "number" &&
    Number.isSafeInteger(generation) &&
    generation >= 0 &&
    (systemIdentifier === undefined || (typeof systemIdentifier === "string" && /^[0-9]{1,20}$/.test(systemIdentifier))) &&
    (legacy === undefined || typeof legacy === "boolean");
  if (!valid) {
    throw new RelevoError(ErrorCode.RepositoryCorrupt, `${location}: ${REPOSITORY_DESCRIPTOR_KEY} is not a descriptor Relevo can read`, {
      details: { repository: location, key: REPOSITORY_DESCRIPTOR_KEY },
    });
  }
  return {
    format: 1,
    generation,
    ...(systemIdentifier === undefined ? {} : { systemIdentifier }),
    ...(legacy === undefined ? {} : { legacy }),
  };
}

/**
 * The descriptor of a new generation after `current` (null: none stored,
 * generation 0): the next number, and nothing of the previous cluster's
 * (its system identifier, its legacy content belong to it). Pure.
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
