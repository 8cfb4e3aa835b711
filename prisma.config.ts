import { defineConfig } from "prisma/config";

// `env("DATABASE_URL")` throws when the variable is unset, even for
// `prisma generate`; generation needs no database, so fall back to a
// placeholder. The service itself connects through @prisma/adapter-pg.
export default defineConfig({
  schema: "prisma/schema.prisma",
  migrations: { path: "prisma/migrations" },
  datasource: { url: process.env.DATABASE_URL ?? "postgresql://relevo@127.0.0.1:5432/relevo" },
});
