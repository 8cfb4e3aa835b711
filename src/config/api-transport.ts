import { isIP } from "node:net";
import { ErrorCode, RelevoError } from "../errors";
import type { RelevoConfig } from "./config";

/**
 * How the API is served: HTTPS with the operator's certificate files, HTTPS
 * with a certificate Relevo's CA issues for RELEVO_HOST, or plain HTTP —
 * on a loopback address (the one exception: nothing leaves the machine),
 * or elsewhere only when RELEVO_API_TLS=off says the operator accepts
 * plaintext. Decided once from the configuration; pure.
 */
export type ApiTransport =
  | { readonly phase: "https-files"; readonly certificateFile: string; readonly keyFile: string }
  | { readonly phase: "https-issued"; readonly addresses: readonly string[] }
  | { readonly phase: "http-loopback" }
  | { readonly phase: "http-plaintext-accepted" };

type ApiTlsSettings = Pick<RelevoConfig, "host" | "apiTls" | "apiTlsCertFile" | "apiTlsKeyFile">;

/** A loopback address: 127.0.0.0/8, ::1 (also IPv4-mapped), or the name `localhost`. Pure. */
export function isLoopback(host: string): boolean {
  const name = host.toLowerCase().replace(/\.$/, "");
  if (name === "localhost") return true;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(name);
  const address = mapped ? mapped[1]! : name;
  if (isIP(address) === 4) return address.startsWith("127.");
  // The URL parser writes an IPv6 address in its shortest form (0:0:0:0:0:0:0:1 is [::1]).
  return isIP(address) === 6 && new URL(`http://[${address}]/`).hostname === "[::1]";
}

/**
 * The API's transport for these settings; INVALID_CONFIG, saying what to
 * set, for a plain API on an address other machines can reach.
 * (RELEVO_API_TLS_CERT_FILE and _KEY_FILE go together, and not with
 * RELEVO_API_TLS=off: loadConfig checked that.)
 */
export function apiTransport(config: ApiTlsSettings): ApiTransport {
  if (config.apiTlsCertFile !== "") {
    return { phase: "https-files", certificateFile: config.apiTlsCertFile, keyFile: config.apiTlsKeyFile };
  }
  switch (config.apiTls) {
    case "on":
      return { phase: "https-issued", addresses: [config.host] };
    case "off":
      return isLoopback(config.host) ? { phase: "http-loopback" } : { phase: "http-plaintext-accepted" };
    case "auto":
      if (isLoopback(config.host)) return { phase: "http-loopback" };
      throw new RelevoError(
        ErrorCode.InvalidConfig,
        `invalid configuration: the API would listen on ${config.host}, which is not a loopback address, without TLS ` +
          "(bearer tokens in clear): set RELEVO_API_TLS=on (a certificate from Relevo's CA for RELEVO_HOST), or " +
          "RELEVO_API_TLS_CERT_FILE and RELEVO_API_TLS_KEY_FILE (your own), or RELEVO_API_TLS=off to accept plaintext",
        { details: { env: "RELEVO_API_TLS" } },
      );
  }
}

/** Whether the API speaks HTTPS under `transport`. Pure. */
export function isHttps(transport: ApiTransport): boolean {
  return transport.phase === "https-files" || transport.phase === "https-issued";
}

/** The API's GraphQL URL (http or https; an IPv6 host in brackets). Pure. */
export function apiUrl(options: { readonly host: string; readonly port: number; readonly https: boolean }): string {
  const host = isIP(options.host) === 6 ? `[${options.host}]` : options.host;
  return `${options.https ? "https" : "http"}://${host}:${options.port}/graphql`;
}
