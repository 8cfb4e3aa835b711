/**
 * Work shared by the fields of one request. GraphQL runs each alias of a
 * field as its own resolver call, so a request of 200 aliases of `backups`
 * would read the repository 200 times; the fields of one request share one
 * read instead. The context object is the request's own (one per HTTP
 * request, one per WebSocket operation), so a memo never outlives the
 * request, nor serves another client.
 */
const memos = new WeakMap<object, Map<string, unknown>>();

/** The value `compute` gave for `key` earlier in this request (a promise is shared while pending), or a new one. */
export function perRequest<T>(context: object, key: string, compute: () => T): T {
  let memo = memos.get(context);
  if (!memo) memos.set(context, (memo = new Map<string, unknown>()));
  if (memo.has(key)) return memo.get(key) as T;
  const value = compute();
  memo.set(key, value);
  return value;
}
