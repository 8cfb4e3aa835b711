// ESLint for the TypeScript sources, tests and benchmarks (`npm run lint`, part of `npm test`).
// Formatting is Prettier's business (`npm run format`); ESLint looks for defects.
import js from "@eslint/js";
import globals from "globals";
import tseslint from "typescript-eslint";

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
    files: ["**/*.js", "**/*.mjs", "**/*.cjs"],
    ...tseslint.configs.disableTypeChecked,
  },
);
