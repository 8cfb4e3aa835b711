import pino, { type Logger } from "pino";

export type { Logger };

/**
 * Structured JSON logs. Secrets never reach a log line: these paths are
 * redacted wherever they appear, as a second line of defence behind the rule
 * that code never logs a password, token or connection string.
 */
export function createLogger(options: { level: string; destination?: pino.DestinationStream }): Logger {
  return pino(
    {
      level: options.level,
      base: { service: "relevo" },
      redact: {
        paths: [
          "password",
          "*.password",
          "token",
          "*.token",
          "authorization",
          "*.authorization",
          "connectionString",
          "*.connectionString",
          "env",
          "*.env",
          // A repository's credentials and cipher pass (RELEVO_REPO<n>_…), wherever a settings object is logged.
          "secretAccessKey",
          "*.secretAccessKey",
          "cipherPass",
          "*.cipherPass",
        ],
        censor: "[redacted]",
      },
    },
    options.destination ?? pino.destination(2),
  );
}
