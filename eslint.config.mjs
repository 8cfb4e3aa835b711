// ESLint for the TypeScript sources, tests and benchmarks (`npm run lint`, part of `npm test`).
// Formatting is Prettier's business (`npm run format`); ESLint looks for defects.
import js from "@eslint/js";
import globals from "globals";
import tseslint from "typescript-eslint";

/** pg's Client and Pool, whose connections would answer a cleartext or MD5 password request. */
const pgClients = {
  name: "pg",
  importNames: ["Client", "Pool", "default", "native"],
  allowTypeImports: true,
  message: "open PostgreSQL connections with NodeClient (src/postgres/node-client.ts): it refuses cleartext and MD5 password requests",
};

const prismaPgAdapter = {
  name: "@prisma/adapter-pg",
  allowTypeImports: true,
  message: "build Prisma's adapter with primaryAdapter (src/db/primary-database.ts): its pool is made of NodeClients",
};

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**", "src/generated/**", "coverage/**"] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      globals: { ...globals.node },
      parserOptions: { project: ["./tsconfig.check.json"], tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // Unused on purpose: a `_`-prefixed parameter (a resolver's decorated
      // argument that only declares the GraphQL schema's argument) and a
      // property taken out of an object so that `...rest` goes without it.
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", ignoreRestSiblings: true }],
    },
  },
  {
    // The ground floor (PostgreSQL facts, Redis, events, the database, small
    // helpers) never reaches up into the domains or the edges that build on it.
    files: ["src/postgres/**", "src/redis/**", "src/events/**", "src/db/**", "src/util/**"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            {
              regex: "^\\.\\./(cluster|backup|failover|wal|storage|restore|scheduler|api|cli|service)(/|$)",
              message: "infrastructure must not import a domain (docs/architecture.md, Layers)",
            },
          ],
        },
      ],
    },
  },
  {
    // Every PostgreSQL connection Relevo opens is a NodeClient, which never
    // sends a password in clear or as MD5 (docs/security.md, "Who gets a
    // password"): pg's own Client and Pool only in that file, Prisma's pg
    // adapter only where it is given NodeClient. Types stay importable.
    files: ["src/**"],
    ignores: ["src/postgres/node-client.ts", "src/db/primary-database.ts"],
    rules: { "@typescript-eslint/no-restricted-imports": ["error", { paths: [pgClients, prismaPgAdapter] }] },
  },
  {
    files: ["src/db/primary-database.ts"],
    rules: { "@typescript-eslint/no-restricted-imports": ["error", { paths: [pgClients] }] },
  },
  {
    files: ["**/*.js", "**/*.mjs", "**/*.cjs"],
    ...tseslint.configs.disableTypeChecked,
  },
);
