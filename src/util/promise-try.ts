/**
 * Calls `fn` now and gives its outcome as a promise: what it returned, or a
 * rejection with what it threw. That is what an `async` function without an
 * `await` does, for callbacks that must return a promise but have nothing to
 * wait for and may throw (ES2025's Promise.try, beyond this project's ES2022
 * target and Node 22's V8).
 */
export function promiseTry<T>(fn: () => T): Promise<T> {
  return new Promise<T>((resolve) => resolve(fn()));
}
