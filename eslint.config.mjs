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
    files: ["**/*.js", "**/*.mjs", "**/*.cjs"],
    ...tseslint.configs.disableTypeChecked,
  },
);
