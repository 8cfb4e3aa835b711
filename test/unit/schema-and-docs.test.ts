import { readFile } from "node:fs/promises";
import path from "node:path";
import { SCHEMA_FILE, schemaSdl } from "../../src/api/schema-sdl";
import { describeConfig } from "../../src/config/config";
import { EVENT_KINDS } from "../../src/events/event-map";
import { projectRoot } from "../../src/util/project-root";

const read = (file: string) => readFile(path.join(projectRoot(), file), "utf8");

describe("committed artefacts stay true to the code", () => {
  test("schema/schema.graphql is what the code emits (run `npm run schema:emit` after changing the API)", async () => {
    expect(await read(SCHEMA_FILE)).toBe(await schemaSdl());
  });

  test("the contract's names are in the schema", async () => {
    const sdl = await read(SCHEMA_FILE);
    expect(sdl).toMatch(/enum NodeRole \{\s+PRIMARY\s+REPLICA\s+\}/);
    for (const field of [
      "cluster: Cluster!",
      "node(name: String!): Node!",
      "topologyChanged: Cluster!",
      "lagBytes: Float",
      "replayLagSeconds: Float",
    ]) {
      expect(sdl).toContain(field);
    }
  });

  test("docs/configuration.md documents every configuration variable with its default", async () => {
    const page = await read("docs/configuration.md");
    for (const row of describeConfig()) {
      // The variable's own row of the table names its default.
      const line = page.split("\n").find((candidate) => candidate.startsWith(`| \`${row.env}\` |`));
      expect(line).toBeDefined();
      expect(line).toContain(`| \`${row.default}\` `);
    }
  });

  test("docs/events.md documents every event kind", async () => {
    const page = await read("docs/events.md");
    for (const kind of EVENT_KINDS) expect(page).toContain(`| \`${kind}\` |`);
  });
});
