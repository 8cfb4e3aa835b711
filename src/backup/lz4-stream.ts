import { Transform, type TransformCallback } from "node:stream";
import { compressFrame, decompressFrame } from "lz4-napi";

/**
 * LZ4 for repository content: the input is cut into 1 MiB chunks, each
 * compressed as a standard LZ4 frame (on libuv's thread pool, so several
 * files compress in parallel) and stored as `<4-byte big-endian length><frame>`.
 * The length prefix lets a reader stream frame by frame; each frame on its
 * own is readable by any LZ4 tool.
 */
const CHUNK = 1024 * 1024;

export function createLz4Compress(): Transform {
  let pending: Buffer[] = [];
  let size = 0;
  const emit = async (stream: Transform, data: Buffer): Promise<void> => {
    const frame = await compressFrame(data);
    const header = Buffer.alloc(4);
    header.writeUInt32BE(frame.length);
    stream.push(header);
    stream.push(frame);
  };
  return new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      pending.push(chunk);
      size += chunk.length;
      if (size < CHUNK) return callback();
      const data = Buffer.concat(pending);
      pending = [];
      size = 0;
      emit(this, data).then(() => callback(), callback);
    },
    flush(callback: TransformCallback) {
      if (size === 0) return callback();
      emit(this, Buffer.concat(pending)).then(() => callback(), callback);
    },
  });
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
