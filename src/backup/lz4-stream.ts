import { Transform, type TransformCallback } from "node:stream";
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
  const parts: Buffer[] = [];
  for (let at = 0; at < data.length; at += CHUNK) {
    const frame = await compressFrame(data.subarray(at, at + CHUNK));
    const header = Buffer.alloc(4);
    header.writeUInt32BE(frame.length);
    parts.push(header, frame);
  }
  return Buffer.concat(parts);
}

export function createLz4Decompress(): Transform {
  let buffered: Buffer = Buffer.alloc(0);
  return new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      const frames: Buffer[] = [];
      while (buffered.length >= 4) {
        const length = buffered.readUInt32BE(0);
        if (buffered.length < 4 + length) break;
        frames.push(buffered.subarray(4, 4 + length));
        buffered = buffered.subarray(4 + length);
      }
      (async () => {
        for (const frame of frames) this.push(await decompressFrame(frame));
      })().then(() => callback(), callback);
    },
    flush(callback: TransformCallback) {
      callback(buffered.length === 0 ? null : new Error("truncated LZ4 stream"));
    },
  });
}
