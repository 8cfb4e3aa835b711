import { BLOCK_SIZE, type BlockRanges } from "../backup/relation-files";

/**
 * Reads exact byte counts from a stream of chunks, copying out of each chunk
 * before the next is pulled (the decoders reuse their buffers).
 */
export class ByteReader {
  private readonly iterator: AsyncIterator<Buffer>;
  private current: Buffer = Buffer.alloc(0);
  private ended = false;

  constructor(source: AsyncIterable<Buffer>) {
    this.iterator = source[Symbol.asyncIterator]();
  }

  /** Copies `length` bytes into `target` at `at` (null target: skips them); the bytes actually there. */
  async copy(target: Buffer | null, at: number, length: number): Promise<number> {
    let done = 0;
    while (done < length) {
      if (this.current.length === 0 && !(await this.pull())) break;
      const take = Math.min(length - done, this.current.length);
      if (target) this.current.copy(target, at + done, 0, take);
      this.current = this.current.subarray(take);
      done += take;
    }
    return done;
  }

  /**
   * The next `length` bytes without copying them, when the current chunk
   * holds them all (valid until the next read); null otherwise, nothing read.
   */
  async view(length: number): Promise<Buffer | null> {
    if (this.current.length === 0) await this.pull();
    if (this.current.length < length) return null;
    const view = this.current.subarray(0, length);
    this.current = this.current.subarray(length);
    return view;
  }

  /** Ends the source early (a failed restore): a decoder's thread and file are released. */
  async close(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    this.current = Buffer.alloc(0);
    await this.iterator.return?.();
  }

  /** Reads to the end (so that checksums over the whole source complete); the bytes that were left. */
  async drain(): Promise<number> {
    let left = 0;
    do {
      left += this.current.length;
      this.current = Buffer.alloc(0);
    } while (await this.pull());
    return left;
  }

  /** The source's next chunk as the current one; false at its end. */
  private async pull(): Promise<boolean> {
    if (this.ended) return false;
    const next = await this.iterator.next();
    if (next.done) {
      this.ended = true;
      return false;
    }
    this.current = next.value;
    return true;
  }
}

/** A block-level layer: the stored blocks of one backup, their contents in block order. */
export interface BlockLayer {
  readonly blocks: BlockRanges;
  readonly content: AsyncIterable<Buffer>;
}

const OUTPUT_CHUNK = 1024 * 1024;

/**
 * A file as a chain of backups leaves it: the base (a whole file from the
 * chain's oldest backup that stores it whole, or nothing) with each later
 * layer's blocks written over it, oldest first, cut or extended (zeros) to
 * `size`. Yields chunks of at most 1 MiB, each valid until the next is
 * pulled. Every source is read to its end; a source shorter or longer than
 * its blocks say is an error naming it.
 */
export async function* layeredContent(
  base: AsyncIterable<Buffer> | null,
  size: number,
  layers: readonly BlockLayer[],
): AsyncGenerator<Buffer> {
  const blocks = Math.ceil(size / BLOCK_SIZE);
  // Between two consecutive boundaries, every block is in the same layers.
  const boundaries = new Set<number>([blocks]);
  for (const layer of layers) {
    for (const [first, last] of layer.blocks) {
      if (last >= blocks) throw new Error(`a block-level layer has block ${last}, past the file's ${blocks} blocks`);
      boundaries.add(first).add(last + 1);
    }
  }
  const sortedBoundaries = [...boundaries].sort((a, b) => a - b);
  const baseReader = base ? new ByteReader(base) : null;
  const layerReaders = layers.map((layer) => new ByteReader(layer.content));
  try {
    yield* assemble(size, blocks, sortedBoundaries, layers, baseReader, layerReaders);
  } finally {
    // After an error (or a consumer that stopped early) every source is let go; after success they are at their end already.
    await Promise.allSettled([baseReader, ...layerReaders].filter((reader) => reader !== null).map((reader) => reader.close()));
  }
}

async function* assemble(
  size: number,
  blocks: number,
  sortedBoundaries: readonly number[],
  layers: readonly BlockLayer[],
  baseReader: ByteReader | null,
  layerReaders: readonly ByteReader[],
): AsyncGenerator<Buffer> {
  let nextBoundary = 0;
  const cursors = layers.map(() => 0);
  const layerHas = (index: number, block: number): boolean => {
    const ranges = layers[index]!.blocks;
    while (cursors[index]! < ranges.length && ranges[cursors[index]!]![1] < block) cursors[index]! += 1;
    const range = ranges[cursors[index]!];
    return range !== undefined && range[0] <= block;
  };
  const output = Buffer.allocUnsafeSlow(OUTPUT_CHUNK);
  let position = 0;
  let baseExhausted = false;
  while (position < size) {
    const length = Math.min(OUTPUT_CHUNK, size - position);
    const firstBlock = Math.floor(position / BLOCK_SIZE);
    while (sortedBoundaries[nextBoundary]! <= firstBlock) nextBoundary += 1;
    // Most of a large file: a whole chunk of the base, no layer in it: passed on as it is.
    if (
      baseReader &&
      !baseExhausted &&
      (sortedBoundaries[nextBoundary]! - firstBlock) * BLOCK_SIZE >= length &&
      !layers.some((_, index) => layerHas(index, firstBlock))
    ) {
      const view = await baseReader.view(length);
      if (view) {
        position += length;
        yield view;
        continue;
      }
    }
    let at = 0;
    while (at < length) {
      const block = Math.floor((position + at) / BLOCK_SIZE);
      while (sortedBoundaries[nextBoundary]! <= block) nextBoundary += 1;
      const runBytes = Math.min((sortedBoundaries[nextBoundary]! - block) * BLOCK_SIZE, length - at);
      // The newest layer with these blocks supplies them; every other source
      // that has them is read past them, to stay in step.
      let owner = -1;
      for (let index = layers.length - 1; index >= 0; index -= 1) {
        if (!layerHas(index, block)) continue;
        const got = await layerReaders[index]!.copy(owner === -1 ? output : null, at, runBytes);
        if (got !== runBytes) throw new Error(`block-level layer ${index + 1} ends early`);
        if (owner === -1) owner = index;
      }
      const fromBase = baseReader && !baseExhausted ? await baseReader.copy(owner === -1 ? output : null, at, runBytes) : 0;
      if (fromBase < runBytes) baseExhausted = true;
      if (owner === -1) output.fill(0, at + fromBase, at + runBytes);
      at += runBytes;
    }
    position += length;
    yield output.subarray(0, length);
  }
  if (baseReader) await baseReader.drain();
  for (const [index, reader] of layerReaders.entries()) {
    if ((await reader.drain()) !== 0) throw new Error(`block-level layer ${index + 1} holds more than its blocks`);
  }
}
