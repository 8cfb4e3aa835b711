import { Worker } from "node:worker_threads";

/** Decoded content comes back through shared slots of this size. */
const SLOT_BYTES = 1024 * 1024;
const SLOTS = 8;

/** What the worker says about the stored bytes once it has read them all. */
export interface StoredSummary {
  readonly storedBytes: number;
  readonly storedSha256: string;
}

type WorkerMessage =
  { readonly slot: number; readonly length: number } | ({ readonly done: true } & StoredSummary) | { readonly error: string };

/**
 * The worker: reads the stored range, hashes it, decompresses several frames
 * at once and copies the content into free slots of the shared buffer, in
 * order, telling the service thread which slot holds what. Plain JavaScript,
 * so that it runs the same from the build and under the test runner.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const { createReadStream } = require("node:fs");
const { decompressFrame } = require(workerData.lz4Module);
const { file, start, bytes, slotBytes, slots } = workerData;
const shared = Buffer.from(workerData.shared);
const free = Array.from({ length: slots }, (_, index) => index);
let wake = null;
parentPort.on("message", (message) => {
  free.push(message.free);
  if (wake) { const resume = wake; wake = null; resume(); }
});
async function takeSlot() {
  while (free.length === 0) await new Promise((resolve) => (wake = resolve));
  return free.shift();
}
async function emit(content) {
  for (let at = 0; at < content.length; at += slotBytes) {
    const slot = await takeSlot();
    const length = content.copy(shared, slot * slotBytes, at, Math.min(at + slotBytes, content.length));
    parentPort.postMessage({ slot, length });
  }
}
(async () => {
  const hash = createHash("sha256");
  let storedBytes = 0;
  let buffered = Buffer.alloc(0);
  const inFlight = [];
  const source = bytes === 0 ? [] : createReadStream(file, { start, end: start + bytes - 1, highWaterMark: 1024 * 1024 });
  for await (const chunk of source) {
    hash.update(chunk);
    storedBytes += chunk.length;
    buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
    while (buffered.length >= 4) {
      const length = buffered.readUInt32BE(0);
      if (buffered.length < 4 + length) break;
      const content = decompressFrame(buffered.subarray(4, 4 + length));
      content.catch(() => undefined);
      inFlight.push(content);
      buffered = buffered.subarray(4 + length);
      if (inFlight.length >= 4) await emit(await inFlight.shift());
    }
  }
  if (buffered.length > 0) throw new Error("truncated LZ4 stream");
  while (inFlight.length > 0) await emit(await inFlight.shift());
  parentPort.postMessage({ done: true, storedBytes, storedSha256: hash.digest("hex") });
})().catch((error) => parentPort.postMessage({ error: String(error && error.message ? error.message : error) }));
`;

const LZ4_MODULE = require.resolve("lz4-napi");

/**
 * Decodes an LZ4-stored range (see lz4-stream) in a worker thread and yields
 * the content in order, as views of a shared buffer: each chunk is valid
 * until the next one is pulled (NodeDriver.writeStream's contract).
 *
 * Why a worker: LZ4 output is a fresh buffer per MiB, and on the service's
 * thread each 64 MB of them makes V8 mark the whole service heap; a gigabyte
 * restored that way cost four times the CPU of the same work in a small heap.
 * `onStored` gets the stored bytes' length and SHA-256 at the end.
 */
export async function* decodeLz4InWorker(
  file: string,
  range: { readonly start: number; readonly bytes: number },
  onStored?: (summary: StoredSummary) => void,
): AsyncGenerator<Buffer> {
  const shared = new SharedArrayBuffer(SLOT_BYTES * SLOTS);
  const worker = new Worker(WORKER_SOURCE, {
    eval: true,
    workerData: { file, start: range.start, bytes: range.bytes, shared, slotBytes: SLOT_BYTES, slots: SLOTS, lz4Module: LZ4_MODULE },
  });
  const inbox: WorkerMessage[] = [];
  let wake: (() => void) | null = null;
  const deliver = (message: WorkerMessage): void => {
    inbox.push(message);
    const resume = wake;
    wake = null;
    resume?.();
  };
  worker.on("message", deliver);
  worker.on("error", (error: Error) => deliver({ error: error.message }));
  worker.on("exit", (code) => deliver({ error: `decoder exited (code ${code})` }));
  try {
    for (;;) {
      while (inbox.length === 0) await new Promise<void>((resolve) => (wake = resolve));
      const message = inbox.shift()!;
      if ("error" in message) throw new Error(message.error);
      if ("done" in message) {
        onStored?.({ storedBytes: message.storedBytes, storedSha256: message.storedSha256 });
        return;
      }
      yield Buffer.from(shared, message.slot * SLOT_BYTES, message.length);
      worker.postMessage({ free: message.slot });
    }
  } finally {
    worker.removeAllListeners("exit");
    await worker.terminate();
  }
}
