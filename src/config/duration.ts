/**
 * Durations as operators write them: a whole number and a unit, `90s`,
 * `15m`, `12h`, `30d`. Used by `relevo token --ttl` and by the configuration
 * keys that are periods (RELEVO_EVENTS_RETENTION, RELEVO_TOKEN_TTL).
 */
const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/** Milliseconds, or null when `text` is not a duration. */
export function parseDuration(text: string): number | null {
  const match = /^(\d{1,6})([smhd])$/.exec(text.trim());
  if (!match) return null;
  const ms = Number(match[1]) * UNIT_MS[match[2] as keyof typeof UNIT_MS];
  return ms > 0 ? ms : null;
}

/** The largest unit that divides `ms` exactly: 2592000000 → "30d". */
export function formatDuration(ms: number): string {
  for (const unit of ["d", "h", "m"] as const) {
    if (ms % UNIT_MS[unit] === 0) return `${ms / UNIT_MS[unit]}${unit}`;
  }
  return `${Math.round(ms / 1000)}s`;
}
