import { compressFrame, decompressFrame } from "lz4-napi";

/**
 * LZ4 for repository content: the input is cut into 1 MiB chunks, each
 * compressed as a standard LZ4 frame (on libuv's thread pool, several at
 * once, so even one large file keeps the cores busy) and stored as `<4-byte big-endian length><frame>`.
 * The length prefix lets a reader stream frame by frame; each frame on its
 * own is readable by any LZ4 tool.
 */
const CHUNK = 1024 * 1024;

/** One chunk (at most 1 MiB) as one length-prefixed frame of the stream format. */
export async function lz4Frame(chunk: Buffer): Promise<Buffer> {
  const frame = await compressFrame(chunk);
  const header = Buffer.alloc(4);
  header.writeUInt32BE(frame.length);
  return Buffer.concat([header, frame]);
}

/** A whole buffer in the stream format: its 1 MiB chunks as consecutive frames. */
export async function lz4Compress(data: Buffer): Promise<Buffer> {
  const frames: Buffer[] = [];
  for (let at = 0; at < data.length; at += CHUNK) frames.push(await lz4Frame(data.subarray(at, at + CHUNK)));
  return Buffer.concat(frames);
}

/** Pure: the whole frames at the start of `buffered`, and what follows them. */
function cutFrames(buffered: Buffer): { frames: Buffer[]; rest: Buffer } {
  const frames: Buffer[] = [];
  let rest = buffered;
  while (rest.length >= 4) {
    const length = rest.readUInt32BE(0);
    if (rest.length < 4 + length) break;
    frames.push(rest.subarray(4, 4 + length));
    rest = rest.subarray(4 + length);
  }
  return { frames, rest };
}

/** The frames of the stream format, as they arrive. */
async function* lz4Frames(stored: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  let rest: Buffer = Buffer.alloc(0);
  for await (const chunk of stored) {
    const cut = cutFrames(rest.length === 0 ? chunk : Buffer.concat([rest, chunk]));
    yield* cut.frames;
    rest = cut.rest;
  }
  if (rest.length > 0) throw new Error("truncated LZ4 stream");
}

/** A whole stored content decoded at once (a small file: usually one frame). */
export async function lz4DecodeBuffer(stored: Buffer): Promise<Buffer> {
  const { frames, rest } = cutFrames(stored);
  if (rest.length > 0) throw new Error("truncated LZ4 stream");
  const parts: Buffer[] = [];
  for (const frame of frames) parts.push(await decompressFrame(frame));
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}

/** Frames decompressed at once while decoding one file (on the thread pool). */
const FRAMES_IN_FLIGHT = 4;

/** Decodes the stream format, several frames at once, yielding content in order. */
export async function* lz4Decode(stored: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const inFlight: Array<Promise<Buffer>> = [];
  try {
    for await (const frame of lz4Frames(stored)) {
      const content = decompressFrame(frame);
      content.catch(() => undefined); // awaited in order below; not an unhandled rejection meanwhile
      inFlight.push(content);
      if (inFlight.length >= FRAMES_IN_FLIGHT) yield await inFlight.shift()!;
    }
    while (inFlight.length > 0) yield await inFlight.shift()!;
  } finally {
    inFlight.length = 0;
  }
}
