import type { NodeTlsPaths } from "../nodes/node-driver";
import { configLine, configString } from "./config-values";

/**
 * PostgreSQL over TLS, as text: the server's settings, and what every libpq
 * client Relevo starts (replication's WAL receiver, pg_basebackup,
 * pg_rewind, pg_receivewal, pg_amcheck) is told. Pure.
 */

/**
 * relevo.conf's TLS lines. TLS 1.2 at least (PostgreSQL 15's default,
 * written so an inherited setting cannot lower it); ssl_ca_file lets a
 * client certificate signed by the CA be checked (hostssl … cert).
 */
export function serverTlsSettings(paths: NodeTlsPaths): string[] {
  return [
    "ssl = on",
    configLine("ssl_cert_file", configString(paths.certificate, "ssl_cert_file")),
    configLine("ssl_key_file", configString(paths.key, "ssl_key_file")),
    configLine("ssl_ca_file", configString(paths.ca, "ssl_ca_file")),
    "ssl_min_protocol_version = 'TLSv1.2'",
  ];
}

/**
 * The libpq parameters of every connection Relevo's tools and replicas
 * make: the server's certificate verified against the CA and its name
 * against the host connected to (verify-full), and SCRAM with channel
 * binding required, which libpq 15 refuses to give up for a cleartext or
 * MD5 request: a stranger on a member's port learns no password.
 */
export function libpqTlsParameters(caFile: string): { sslmode: string; sslrootcert: string; channel_binding: string } {
  return { sslmode: "verify-full", sslrootcert: caFile, channel_binding: "require" };
}

/**
 * What a connection URI handed to an operator or an API client carries:
 * verify-full against the CA's file (its path on Relevo's host).
 */
export function uriTlsParameters(caFile: string): { sslmode: string; sslrootcert: string } {
  return { sslmode: "verify-full", sslrootcert: caFile };
}

/**
 * The same as environment variables, for every PostgreSQL tool a driver
 * runs (a connection string given on its command line still wins): no
 * tool connects without them, whoever wrote its arguments.
 */
export function libpqTlsEnvironment(caFile: string): Record<string, string> {
  const parameters = libpqTlsParameters(caFile);
  return { PGSSLMODE: parameters.sslmode, PGSSLROOTCERT: parameters.sslrootcert, PGCHANNELBINDING: parameters.channel_binding };
}
