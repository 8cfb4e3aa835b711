import { lsnFromNumber, lsnToNumber } from "./lsn";

/** WAL segment file names and LSNs (16 MiB segments, the default Relevo initialises with). */
export const SEGMENT_SIZE = 16 * 1024 * 1024;
const SEGMENTS_PER_XLOGID = 0x100000000 / SEGMENT_SIZE;

export function segmentNumber(lsn: string): number {
  return Math.floor(lsnToNumber(lsn) / SEGMENT_SIZE);
}

const hex = (value: number): string => value.toString(16).toUpperCase().padStart(8, "0");

/** A timeline's history file, as PostgreSQL names it ("00000002.history"). */
export function historyFileName(timeline: number): string {
  return `${hex(timeline)}.history`;
}

export function segmentName(timeline: number, segment: number): string {
  return `${hex(timeline)}${hex(Math.floor(segment / SEGMENTS_PER_XLOGID))}${hex(segment % SEGMENTS_PER_XLOGID)}`;
}

export function parseSegmentName(name: string): { timeline: number; segment: number } | null {
  const match = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$/.exec(name);
  if (!match) return null;
  return { timeline: parseInt(match[1]!, 16), segment: parseInt(match[2]!, 16) * SEGMENTS_PER_XLOGID + parseInt(match[3]!, 16) };
}

/** The LSN a segment starts at ("X/Y", as PostgreSQL prints LSNs). */
export function segmentStartLsn(segment: number): string {
  return lsnFromNumber(segment * SEGMENT_SIZE);
}
