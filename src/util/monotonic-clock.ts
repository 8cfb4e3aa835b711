/**
 * Milliseconds on a clock that only moves forward, at a steady rate
 * (performance.now(): CLOCK_MONOTONIC), from an origin of this process's
 * own. Every "how long since" and "until when" a decision rests on — a
 * lease still held, a hold-off over, a deadline passed — is measured on it.
 * Date.now() is the wall clock: NTP steps it, an operator sets it, a
 * virtual machine resumes with it far off; a lease measured on it alone is
 * held for an hour after a step back of an hour. The wall clock stays for
 * what is shown or stored (event times, journal stamps), and for what Redis
 * measures by it: a key's expiry (leaseLapsed checks both clocks). A monotonic time means nothing to another process: never
 * store one, never compare it with one from elsewhere.
 */
export function monotonicNowMs(): number {
  return performance.now();
}
