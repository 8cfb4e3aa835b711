import { chmod, mkdtemp } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

/**
 * A data home of its own under the system temp directory: CI clones the
 * repository into a folder the PostgreSQL OS user may not be able to
 * traverse. Left in place after the run, for inspection when a test fails.
 */
export async function tempHome(label: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `relevo-test-${label}-`));
  await chmod(dir, 0o711);
  return dir;
}
