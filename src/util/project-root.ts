import { existsSync } from "node:fs";
import path from "node:path";

/**
 * The package's root (where package.json, prisma/ and schema/ live), found by
 * walking up from this file: the same from src/ under ts-jest and from dist/src/.
 */
export function projectRoot(): string {
  let dir = __dirname;
  while (!existsSync(path.join(dir, "package.json"))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${__dirname}`);
    dir = parent;
  }
  return dir;
}
