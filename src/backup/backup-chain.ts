import { ErrorCode, RelevoError } from "../errors";
import type { BackupManifest, ManifestEntry } from "./manifest";
import { BLOCK_SIZE, blockCount } from "./relation-files";
import type { Repository } from "../storage/repository";

/**
 * The backups a restore of `manifest` reads, oldest (the full) first: each
 * one's reference before it. Every one must be complete; a missing or
 * unusable link is an error naming it.
 */
export async function backupChain(repository: Repository, manifest: BackupManifest): Promise<BackupManifest[]> {
  const chain = [manifest];
  let current = manifest;
  while (current.reference) {
    const reference = await repository.readManifest(current.reference);
    if (!reference || reference.status !== "completed") {
      throw new RelevoError(
        ErrorCode.PreconditionFailed,
        `backup ${manifest.id} is not restorable: it builds on ${current.reference}, which is ${reference ? reference.status : "missing from the repository"}`,
        { details: { backupId: manifest.id, reference: current.reference } },
      );
    }
    if (chain.some((link) => link.id === reference.id))
      throw new RelevoError(ErrorCode.Internal, `backup chain of ${manifest.id} loops at ${reference.id}`);
    chain.unshift(reference);
    current = reference;
  }
  return chain;
}

/** One stored content of a chain: the backup that holds it and its entry. */
export interface ChainSource {
  readonly manifest: BackupManifest;
  readonly entry: ManifestEntry;
}

/** Where one file of the chain's newest backup comes from. */
export interface ResolvedFile {
  /** The file as the newest backup records it (its length is the one restored). */
  readonly entry: ManifestEntry;
  /** The newest whole copy down the chain. */
  readonly base: ChainSource;
  /** Block-level entries with stored blocks after the base, oldest first. */
  readonly layers: readonly ChainSource[];
}

/** Resolves every file of the chain's newest backup. Pure over the manifests. */
export function resolveChainFiles(chain: readonly BackupManifest[]): ResolvedFile[] {
  const byPath = chain.map((manifest) => new Map(manifest.files.map((entry) => [entry.path, entry] as const)));
  const newest = chain[chain.length - 1]!;
  return newest.files
    .filter((entry) => entry.type === "file")
    .map((entry) => {
      const layers: ChainSource[] = [];
      let index = chain.length - 1;
      let current = entry;
      while (current.blocks) {
        if (current.stored && current.blocks.length > 0) layers.unshift({ manifest: chain[index]!, entry: current });
        index -= 1;
        const older = index >= 0 ? byPath[index]!.get(entry.path) : undefined;
        if (!older || older.type !== "file") {
          throw new RelevoError(
            ErrorCode.PreconditionFailed,
            `backup ${newest.id} is damaged: ${entry.path} has no earlier copy in ${chain[index]?.id ?? "its chain"}`,
            {
              details: { file: entry.path },
            },
          );
        }
        current = older;
      }
      if (!current.stored) throw new RelevoError(ErrorCode.Internal, `manifest of ${chain[index]!.id} has no content for ${entry.path}`);
      return { entry, base: { manifest: chain[index]!, entry: current }, layers };
    });
}

/** The content length stored for an entry: the whole file, or its stored blocks. */
export function storedContentLength(entry: ManifestEntry): number {
  return entry.blocks ? blockCount(entry.blocks) * BLOCK_SIZE : entry.size;
}
