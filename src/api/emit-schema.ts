import { writeFile } from "node:fs/promises";
import path from "node:path";
import { projectRoot } from "../util/project-root";
import { SCHEMA_FILE, schemaSdl } from "./schema-sdl";

/** `npm run schema:emit`: rewrites schema/schema.graphql from the code. */
async function main(): Promise<void> {
  const file = path.join(projectRoot(), SCHEMA_FILE);
  await writeFile(file, await schemaSdl());
  process.stdout.write(`wrote ${file}\n`);
}

main().catch((error) => {
  process.stderr.write(`${(error as Error).stack}\n`);
  process.exitCode = 1;
});
