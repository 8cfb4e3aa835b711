import { readFile } from "node:fs/promises";
import { ErrorCode, RelevoError } from "../errors";

/**
 * The content of a file a variable names (a CA, a certificate, a key),
 * read at start; INVALID_CONFIG naming the variable when it cannot be read
 * (the path is shown, never the content).
 */
export async function readConfiguredFile(file: string, env: string): Promise<string> {
  try {
    return await readFile(file, "utf8");
  } catch (cause) {
    throw new RelevoError(
      ErrorCode.InvalidConfig,
      `invalid configuration: ${env}=${JSON.stringify(file)} cannot be read (${(cause as NodeJS.ErrnoException).code ?? "unreadable"})`,
      { cause, details: { env } },
    );
  }
}
