import { EventStreamReads, MAX_SCANNED } from "../../src/events/event-log";
import { ErrorCode, RelevoError } from "../../src/errors";

/** Stream entries as XREVRANGE returns them: [id, ["event", body]], newest first from `newest`. */
function entries(newest: number, count: number): Array<[string, string[]]> {
  return Array.from({ length: count }, (_, i) => {
    const id = `${newest - i}-0`;
    return [id, ["event", JSON.stringify({ id: `e${newest - i}`, kind: "node:down", node: "node1", message: "down" })]];
  });
}

describe("the stream reads of one request (EventStreamReads)", () => {
  test("pages from the same point share one read and one decoding, whatever their filters", async () => {
    const reads = new EventStreamReads();
    let calls = 0;
    const read = () => {
      calls += 1;
      return Promise.resolve(entries(1000, 500));
    };
    const [first, second] = await Promise.all([reads.batch("+", 500, read), reads.batch("+", 500, read)]);
    expect(calls).toBe(1);
    expect(second).toBe(first);
    expect(first.events[0]).toMatchObject({ id: "e1000", streamId: "1000-0" });
    expect(first.lastStreamId).toBe("501-0");
  });

  test("a request reads at most MAX_SCANNED entries in all; past that its event queries are QUERY_TOO_COMPLEX", async () => {
    const reads = new EventStreamReads();
    let newest = 10_000_000;
    for (let read = 0; read < MAX_SCANNED / 500; read += 1) {
      await reads.batch(`(${newest}-0`, 500, () => Promise.resolve(entries(newest, 500)));
      newest -= 500;
    }
    let refusal: unknown;
    try {
      await reads.batch(`(${newest}-0`, 500, () => Promise.resolve(entries(newest, 500)));
    } catch (error) {
      refusal = error;
    }
    expect(refusal).toBeInstanceOf(RelevoError);
    expect((refusal as RelevoError).code).toBe(ErrorCode.QueryTooComplex);
    // What was read already is still shared.
    expect((await reads.batch(`(${10_000_000}-0`, 500, () => Promise.reject(new Error("read again")))).events).toHaveLength(500);
  });

  test("a short stream is counted by what it holds, not by the batches asked for", async () => {
    const reads = new EventStreamReads();
    // 200 reads of a batch of 500 asked for would be 100 000 entries; 3 each came back, 600 in all: none is refused.
    const sizes: number[] = [];
    for (let after = 0; after < 200; after += 1) {
      sizes.push((await reads.batch(`(${after}-0`, 500, () => Promise.resolve(entries(after, 3)))).events.length);
    }
    expect(sizes).toEqual(Array.from({ length: 200 }, () => 3));
  });
});
