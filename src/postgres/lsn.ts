/**
 * Log sequence numbers as PostgreSQL prints them ("16/B374D848": the high and
 * low 32 bits in hex) and as byte positions in the WAL. A JavaScript number
 * holds every LSN exactly up to 2^53 bytes (8 PiB of WAL), far beyond any
 * cluster's lifetime, so plain arithmetic is safe; comparing the strings is
 * not ("0/FFFFFFFF" > "1/0").
 */

/** The byte position of an LSN. */
export function lsnToNumber(lsn: string): number {
  const [high, low] = lsn.split("/");
  return parseInt(high ?? "0", 16) * 2 ** 32 + parseInt(low ?? "0", 16);
}

/** An LSN as PostgreSQL prints it. */
export function lsnFromNumber(value: number): string {
  return `${Math.floor(value / 2 ** 32)
    .toString(16)
    .toUpperCase()}/${(value % 2 ** 32).toString(16).toUpperCase()}`;
}

/** The byte position of an LSN that may be unknown. */
export function lsnBytes(lsn: string | null): number | null {
  return lsn === null ? null : lsnToNumber(lsn);
}

/** How many bytes `behind` trails `ahead` (0 when it does not). */
export function bytesBehind(ahead: string, behind: string): number {
  return Math.max(0, lsnToNumber(ahead) - lsnToNumber(behind));
}
