import { realpath } from "node:fs/promises";
import path from "node:path";

/**
 * `target` made absolute with every symbolic link of its existing part
 * resolved: the longest ancestor that exists goes through realpath, the rest
 * (not made yet) is appended as written. So two spellings of one directory
 * (through a link, or with `..`) give one answer, whether the directory
 * exists yet or not — a member's node directory is absent while it is being
 * seeded again.
 */
export async function resolveRealPath(target: string): Promise<string> {
  const missing: string[] = [];
  let existing = path.resolve(target);
  for (;;) {
    try {
      return path.join(await realpath(existing), ...missing);
    } catch (error) {
      const parent = path.dirname(existing);
      if ((error as NodeJS.ErrnoException).code !== "ENOENT" || parent === existing) throw error;
      missing.unshift(path.basename(existing));
      existing = parent;
    }
  }
}
