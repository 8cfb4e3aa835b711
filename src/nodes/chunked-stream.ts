import type { ChunkedReadOptions } from "./node-driver";

/**
 * Cuts a byte stream into chunks of at most `chunkSize`, copied into a fixed
 * set of `inFlight` buffers that are reused (NodeDriver.readChunks' contract
 * for a driver whose bytes arrive as a stream, e.g. over `docker exec`).
 * `segments`: lengths at which a chunk must end (the ranges of readRanges);
 * the stream must then hold exactly their sum. Pulling stops while every
 * buffer is held, so the source is read no faster than `consume` goes.
 */
export async function consumeInChunks(
  source: AsyncIterable<Buffer> | Iterable<Buffer>,
  options: ChunkedReadOptions,
  consume: (chunk: Buffer) => Promise<void>,
  segments?: readonly number[],
): Promise<void> {
  const free: Buffer[] = Array.from({ length: Math.max(1, options.inFlight) }, () => Buffer.allocUnsafeSlow(options.chunkSize));
  const outstanding = new Set<Promise<void>>();
  let failure: { error: unknown } | null = null;
  // Read through a function: the compiler cannot see `consume`'s callbacks set it.
  const failed = (): { error: unknown } | null => failure;
  let current: Buffer | null = null;
  let filled = 0;
  let segment = 0;
  let segmentLeft = segments ? (segments[0] ?? 0) : Number.POSITIVE_INFINITY;

  const takeBuffer = async (): Promise<Buffer> => {
    while (free.length === 0 && failed() === null) await Promise.race(outstanding);
    const failedWith = failed();
    if (failedWith !== null) throw failedWith.error;
    return free.pop()!;
  };
  const dispatch = (): void => {
    if (current === null || filled === 0) return;
    const buffer = current;
    const handed: Promise<void> = consume(buffer.subarray(0, filled)).then(
      () => {
        free.push(buffer);
        outstanding.delete(handed);
      },
      (error: unknown) => {
        failure ??= { error };
        outstanding.delete(handed);
      },
    );
    outstanding.add(handed);
    current = null;
    filled = 0;
  };
  const nextSegment = (): void => {
    dispatch();
    segment += 1;
    segmentLeft = segments![segment] ?? 0;
  };

  if (segments) while (segment < segments.length && segmentLeft === 0) nextSegment();
  for await (const data of source) {
    let offset = 0;
    while (offset < data.length) {
      const failedWith = failed();
      if (failedWith !== null) throw failedWith.error;
      if (segments && segment >= segments.length) throw new Error(`the stream is longer than the ${segments.length} ranges asked for`);
      current ??= await takeBuffer();
      const take = Math.min(data.length - offset, current.length - filled, segmentLeft);
      data.copy(current, filled, offset, offset + take);
      filled += take;
      offset += take;
      segmentLeft -= take;
      if (segments && segmentLeft === 0) {
        nextSegment();
        while (segment < segments.length && segmentLeft === 0) nextSegment();
      } else if (filled === current.length) dispatch();
    }
  }
  dispatch();
  await Promise.all(outstanding);
  const failedWith = failed();
  if (failedWith !== null) throw failedWith.error;
  if (segments && segment < segments.length) throw new Error(`the stream ended inside range ${segment + 1} of ${segments.length}`);
}
