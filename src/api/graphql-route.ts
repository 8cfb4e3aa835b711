/**
 * The one path GraphQL is served on, matched exactly. Express would match a
 * mount path case-insensitively, with a trailing slash and with any sub-path
 * (`/GRAPHQL`, `/graphql/`, `/graphql/x`): each such spelling reached Apollo
 * without the rate limit and the early refusals that are keyed on this path
 * (review 12). So Apollo is mounted on exact, case-sensitive, strict routes,
 * every other spelling is Express's 404, and what is decided before Express
 * (rate limit, early mutation refusal, cached answers) uses this same test.
 */
export const GRAPHQL_PATH = "/graphql";

/**
 * Whether an HTTP request target names GRAPHQL_PATH, whatever its query
 * string. The target is the client's own text, anything at all ("//" is one
 * `new URL` throws on): read without a parser that can throw. Express's
 * router compares the same undecoded path (`/%67raphql` is not this path
 * for either).
 */
export function targetsGraphqlPath(target: string | undefined): boolean {
  const text = target ?? "";
  const queryStart = text.indexOf("?");
  return (queryStart < 0 ? text : text.slice(0, queryStart)) === GRAPHQL_PATH;
}

/**
 * A request target in origin form (`/path?query`). HTTP/1.1 lets a client
 * send the absolute form (`http://host/graphql`), which Express routes by
 * its path: everything decided before Express (targetsGraphqlPath) must see
 * that same path, so the server rewrites the target first (review 13).
 * Anything else is returned as it is. Pure.
 */
export function originForm(target: string | undefined): string {
  const text = target ?? "";
  const absolute = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*/i.exec(text);
  if (!absolute) return text;
  const rest = text.slice(absolute[0].length);
  return rest.startsWith("/") ? rest : `/${rest}`;
}

/**
 * Whether a Content-Type is JSON as body-parser reads it (its media type
 * `application/json`, in any case, parameters ignored): a body the JSON
 * parser would read must not skip what is decided on the parsed body.
 */
export function isJsonContentType(header: string | undefined): boolean {
  const mediaType = (header ?? "").split(";", 1)[0]!;
  return mediaType.trim().toLowerCase() === "application/json";
}
