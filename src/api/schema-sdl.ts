import "reflect-metadata";
import { createPubSub } from "@graphql-yoga/subscription";
import { lexicographicSortSchema, printSchema } from "graphql";
import { buildRelevoSchema } from "./schema";

export const SCHEMA_FILE = "schema/schema.graphql";

/**
 * The schema's SDL as committed in schema/schema.graphql, sorted so that the
 * file only changes when the API does. Nothing is resolved or published, so
 * an in-process pub/sub and no services are needed.
 */
export async function schemaSdl(): Promise<string> {
  const schema = await buildRelevoSchema({ pubSub: createPubSub() });
  return `# Emitted from the code by \`npm run schema:emit\`; a test fails when it drifts.\n\n${printSchema(lexicographicSortSchema(schema))}\n`;
}
