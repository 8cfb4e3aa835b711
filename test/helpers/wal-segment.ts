/** A segment's first bytes as PostgreSQL writes them: a long page header naming `systemIdentifier`, 16 MiB segments. */
export function segmentStart(systemIdentifier: bigint): Buffer {
  const header = Buffer.alloc(64);
  header.writeUInt16LE(0xd110, 0);
  header.writeUInt16LE(0x0002, 2);
  header.writeBigUInt64LE(systemIdentifier, 24);
  header.writeUInt32LE(16 * 1024 * 1024, 32);
  return header;
}
