import { Worker } from "node:worker_threads";

/** Decoded content comes back through shared slots of this size. */
const SLOT_BYTES = 1024 * 1024;
const SLOTS = 8;

/** What the worker says about the stored bytes once it has read them all. */
export interface StoredSummary {
  readonly storedBytes: number;
  readonly storedSha256: string;
}

/** Stored chunks handed to the worker and not yet taken by it: what this thread reads ahead. */
const INPUTS_IN_FLIGHT = 4;

type WorkerMessage =
  | { readonly slot: number; readonly length: number }
  | { readonly taken: true }
  | ({ readonly done: true } & StoredSummary)
  | { readonly error: string };

/**
 * The worker: takes the stored bytes this thread sends it (never a path:
 * what it decodes comes through the repository's store, each chunk
 * checked there), hashes them, decompresses several frames at once and
 * copies the content into free slots of the shared buffer, in order,
 * telling the service thread which slot holds what. Plain JavaScript, so
 * that it runs the same from the build and under the test runner.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const { decompressFrame } = require(workerData.lz4Module);
const { slotBytes, slots } = workerData;
const shared = Buffer.from(workerData.shared);
const free = Array.from({ length: slots }, (_, index) => index);
const inputs = [];
let wake = null;
const resume = () => { if (wake) { const waiting = wake; wake = null; waiting(); } };
parentPort.on("message", (message) => {
  if ("free" in message) free.push(message.free);
  else if ("input" in message) inputs.push(Buffer.from(message.input.buffer, message.input.byteOffset, message.input.byteLength));
  else if ("end" in message) inputs.push(null);
  resume();
});
async function takeSlot() {
  while (free.length === 0) await new Promise((resolve) => (wake = resolve));
  return free.shift();
}
async function nextInput() {
  while (inputs.length === 0) await new Promise((resolve) => (wake = resolve));
  const input = inputs.shift();
  if (input !== null) parentPort.postMessage({ taken: true });
  return input;
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
  for (let chunk = await nextInput(); chunk !== null; chunk = await nextInput()) {
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
 * Decodes LZ4-stored content (see lz4-stream) in a worker thread and yields
 * the content in order, as views of a shared buffer: each chunk is valid
 * until the next one is pulled (NodeDriver.writeStream's contract). This
 * thread reads `stored` (a few chunks ahead of the worker) and posts each
 * chunk to it; a failure to read it (a chunk that fails its check) is
 * thrown as it is.
 *
 * Why a worker: LZ4 output is a fresh buffer per MiB, and on the service's
 * thread each 64 MB of them makes V8 mark the whole service heap; a gigabyte
 * restored that way cost four times the CPU of the same work in a small heap.
 * `onStored` gets the stored bytes' length and SHA-256 at the end.
 */
export async function* decodeLz4InWorker(
  stored: AsyncIterable<Buffer>,
  onStored?: (summary: StoredSummary) => void,
): AsyncGenerator<Buffer> {
  const shared = new SharedArrayBuffer(SLOT_BYTES * SLOTS);
  const worker = new Worker(WORKER_SOURCE, {
    eval: true,
    workerData: { shared, slotBytes: SLOT_BYTES, slots: SLOTS, lz4Module: LZ4_MODULE },
  });
  const inbox: Array<WorkerMessage | { readonly failed: unknown }> = [];
  let wake: (() => void) | null = null;
  let credits = INPUTS_IN_FLIGHT;
  let creditWake: (() => void) | null = null;
  let stopped = false;
  const wakeFeeder = (): void => {
    const resume = creditWake;
    creditWake = null;
    resume?.();
  };
  const deliver = (message: WorkerMessage | { readonly failed: unknown }): void => {
    if ("taken" in message) {
      credits += 1;
      wakeFeeder();
      return;
    }
    inbox.push(message);
    const resume = wake;
    wake = null;
    resume?.();
  };
  worker.on("message", deliver);
  worker.on("error", (error: Error) => deliver({ error: error.message }));
  worker.on("exit", (code) => deliver({ error: `decoder exited (code ${code})` }));
  // Not awaited when the reader stops: it may wait on a source that only its owner's destroy() ends.
  void (async () => {
    for await (const chunk of stored) {
      while (credits === 0 && !stopped) await new Promise<void>((resolve) => (creditWake = resolve));
      if (stopped) return; // the reader stopped: whoever opened `stored` lets go of it
      credits -= 1;
      // One copy of exactly its bytes, moved to the worker: a clone of the view would copy all of the memory it is a view of.
      const input = new Uint8Array(chunk);
      worker.postMessage({ input }, [input.buffer]);
    }
    worker.postMessage({ end: true });
  })().catch((error: unknown) => deliver({ failed: error }));
  try {
    for (;;) {
      while (inbox.length === 0) await new Promise<void>((resolve) => (wake = resolve));
      const message = inbox.shift()!;
      if ("failed" in message) throw message.failed;
      if ("error" in message) throw new Error(message.error);
      if ("done" in message) {
        onStored?.({ storedBytes: message.storedBytes, storedSha256: message.storedSha256 });
        return;
      }
      if ("slot" in message) {
        yield Buffer.from(shared, message.slot * SLOT_BYTES, message.length);
        worker.postMessage({ free: message.slot });
      }
    }
  } finally {
    stopped = true;
    wakeFeeder();
    worker.removeAllListeners("exit");
    await worker.terminate();
  }
}
