/**
 * The long page header PostgreSQL writes at the start of every WAL segment
 * (XLogLongPageHeaderData, access/xlog_internal.h): the standard page header
 * (magic, info, timeline, page address, remaining length, padded to 24
 * bytes), then the system identifier, the segment size and the block size.
 * The system identifier is what ties a segment to its cluster: WAL of
 * another cluster replays into garbage, or not at all. Pure.
 */

/** xlp_info flag of a segment's first page. */
const XLP_LONG_HEADER = 0x0002;
/** Bytes needed to read the system identifier. */
export const WAL_LONG_HEADER_BYTES = 40;
const SYSID_OFFSET = 24;
const SEG_SIZE_OFFSET = 32;

/**
 * The system identifier a segment's first page names, as text; null when the
 * bytes are not a long page header (a segment pg_receivewal preallocated and
 * has not written yet is zeros).
 */
export function walSegmentSystemIdentifier(firstPage: Buffer): string | null {
  if (firstPage.length < WAL_LONG_HEADER_BYTES) return null;
  const info = firstPage.readUInt16LE(2);
  if ((info & XLP_LONG_HEADER) === 0) return null;
  const systemIdentifier = firstPage.readBigUInt64LE(SYSID_OFFSET);
  const segmentSize = firstPage.readUInt32LE(SEG_SIZE_OFFSET);
  // A power of two between 1 MiB and 1 GiB, as initdb allows: anything else is not a header.
  if (systemIdentifier === 0n || segmentSize < 1 << 20 || segmentSize > 1 << 30 || (segmentSize & (segmentSize - 1)) !== 0) return null;
  return systemIdentifier.toString();
}

/** XLOG_PAGE_MAGIC of PostgreSQL 15 (access/xlog_internal.h): every WAL page starts with it; each major version has its own. */
export const XLOG_PAGE_MAGIC_15 = 0xd110;

/** The fields of a segment's first page (XLogLongPageHeaderData), read as they are: see walSegmentRefusal for what they must be. */
export interface WalLongPageHeader {
  readonly magic: number;
  readonly info: number;
  readonly longHeader: boolean;
  /** xlp_tli: the timeline of the page's first record; may be an ancestor of the file's own (a new timeline's first segment copies its parent's). */
  readonly timeline: number;
  /** xlp_pageaddr: the page's LSN, as a byte position. */
  readonly pageAddress: bigint;
  readonly systemIdentifier: string;
  readonly segmentSize: number;
  readonly blockSize: number;
}

/** A segment's first page header; null when `firstPage` is shorter than one. Pure. */
export function readWalLongPageHeader(firstPage: Buffer): WalLongPageHeader | null {
  if (firstPage.length < WAL_LONG_HEADER_BYTES) return null;
  const info = firstPage.readUInt16LE(2);
  return {
    magic: firstPage.readUInt16LE(0),
    info,
    longHeader: (info & XLP_LONG_HEADER) !== 0,
    timeline: firstPage.readUInt32LE(4),
    pageAddress: firstPage.readBigUInt64LE(8),
    systemIdentifier: firstPage.readBigUInt64LE(SYSID_OFFSET).toString(),
    segmentSize: firstPage.readUInt32LE(SEG_SIZE_OFFSET),
    blockSize: firstPage.readUInt32LE(36),
  };
}
