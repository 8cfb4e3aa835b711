import type { RelevoConfig } from "../config/config";
import { ErrorCode, RelevoError } from "../errors";
import { readSecrets } from "../secrets/secrets-store";
import { mintToken } from "../secrets/tokens";

/**
 * The CLI's commands that act on the running service go through its GraphQL
 * API, with an operator token minted from the data home's key, so that they
 * obey the same rules (one backup at a time, audit events) as any client.
 */
export async function callApi<T>(config: RelevoConfig, query: string, variables: Record<string, unknown> = {}): Promise<T> {
  const secrets = await readSecrets(config.home);
  const url = `http://${config.host}:${config.apiPort}/graphql`;
  let response: Response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${mintToken(secrets.tokenKey, "operator")}` },
      body: JSON.stringify({ query, variables }),
    });
  } catch (error) {
    throw new RelevoError(ErrorCode.ServiceUnavailable, `Relevo's API does not answer at ${url}: is \`relevo up\` running?`, { cause: error });
  }
  const body = (await response.json()) as { data?: T; errors?: Array<{ message: string; extensions?: { code?: string } }> };
  const first = body.errors?.[0];
  if (first) {
    const code = Object.values(ErrorCode).includes(first.extensions?.code as ErrorCode) ? (first.extensions!.code as ErrorCode) : ErrorCode.Internal;
    throw new RelevoError(code, first.message);
  }
  return body.data as T;
}
