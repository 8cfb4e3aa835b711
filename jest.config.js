/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: "node",
  roots: ["<rootDir>/test"],
  testMatch: ["**/*.test.ts"],
  transform: {
    "^.+\\.tsx?$": ["ts-jest", { tsconfig: "tsconfig.json", diagnostics: { warnOnly: false } }],
  },
  moduleNameMapper: {
    "^graphql-ws/use/ws$": "<rootDir>/node_modules/graphql-ws/dist/use/ws.cjs",
  },
  // Integration suites start real PostgreSQL clusters and Redis servers.
  testTimeout: 120000,
  // Integration suites each own their cluster; run one at a time on 2 cores.
  maxWorkers: 1,
  verbose: true,
};
