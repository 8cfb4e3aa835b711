import { chmod, mkdtemp } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

/** Where the homes of a test file are listed for the test environment to remove. */
export const HOMES_KEY = "__relevoTestHomes";

/**
 * A data home of its own under the system temp directory: CI clones the
 * repository into a folder the PostgreSQL OS user may not be able to
 * traverse. Removed after the test file (see environment.ts) unless
 * RELEVO_TEST_KEEP_HOMES=1.
 */
export async function tempHome(label: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `relevo-test-${label}-`));
  await chmod(dir, 0o711);
  const registry = globalThis as unknown as Record<string, string[] | undefined>;
  (registry[HOMES_KEY] ??= []).push(dir);
  return dir;
}
