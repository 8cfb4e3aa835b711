import path from "node:path";
import { ErrorCode, RelevoError } from "../errors";

/**
 * Resolves a path under a data directory, refusing anything that escapes it.
 * `posix` for paths inside a container (the Docker driver), the platform's
 * otherwise.
 */
export function resolveInside(root: string, relativePath: string, paths: path.PlatformPath = path): string {
  const resolved = paths.resolve(root, relativePath);
  if (resolved !== root && !resolved.startsWith(root + paths.sep)) {
    throw new RelevoError(ErrorCode.BadUserInput, `path ${relativePath} is outside the data directory`);
  }
  return resolved;
}
