/** @type {import('jest').Config} */
module.exports = {
  // Node, plus removal of the data homes each test file made (test/helpers/environment.ts).
  testEnvironment: "<rootDir>/test/helpers/environment.ts",
  roots: ["<rootDir>/test"],
  testMatch: ["**/*.test.ts"],
  transform: {
    "^.+\\.tsx?$": ["ts-jest", { tsconfig: "tsconfig.json", diagnostics: { warnOnly: false } }],
    // agenda 6 and its Redis backend are ES modules only. Jest 30 requires ES modules natively only on
    // Node 24.9+ and with --experimental-vm-modules; compiled to CommonJS here, they load on Node 22 and 24 alike.
    "node_modules/(agenda|@agendajs/redis-backend)/.+\\.js$": ["ts-jest", { tsconfig: "tsconfig.jest.json", diagnostics: false }],
  },
  transformIgnorePatterns: ["/node_modules/(?!(agenda|@agendajs/redis-backend)/)"],
  moduleNameMapper: {
    "^graphql-ws/use/ws$": "<rootDir>/node_modules/graphql-ws/dist/use/ws.cjs",
  },
  // Integration suites start real PostgreSQL clusters and Redis servers.
  testTimeout: 120000,
  // Integration suites each own their cluster; run one at a time on 2 cores.
  maxWorkers: 1,
  verbose: true,
  // No forceExit: a handle some suite leaks (a Redis client retrying, a timer)
  // is a defect to fix, not to hide. The watchdog fails the run, naming what
  // is left, if the process has not ended shortly after the last test.
  globalTeardown: "<rootDir>/test/helpers/exit-watchdog.ts",
};
