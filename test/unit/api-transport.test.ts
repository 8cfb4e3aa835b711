import { expect } from "@jest/globals";
import path from "node:path";
import { apiTransport, apiUrl, isLoopback } from "../../src/config/api-transport";
import { loadConfig } from "../../src/config/config";
import { ErrorCode } from "../../src/errors";

describe("how the API is served: HTTPS, or plain HTTP on loopback, or plaintext accepted by name (pure)", () => {
  test("loopback: 127.0.0.0/8, ::1 in any spelling, localhost; nothing else", () => {
    for (const host of ["127.0.0.1", "127.1.2.3", "::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1", "localhost", "LOCALHOST."]) {
      expect([host, isLoopback(host)]).toEqual([host, true]);
    }
    for (const host of ["0.0.0.0", "::", "10.0.0.5", "192.168.1.10", "::2", "db.example.org", "localhost.example.org", "128.0.0.1"]) {
      expect([host, isLoopback(host)]).toEqual([host, false]);
    }
  });

  test("the default on 127.0.0.1 stays plain HTTP: the one exception", () => {
    expect(apiTransport(loadConfig({}))).toEqual({ phase: "http-loopback" });
  });

  test("a non-loopback address without TLS is refused with INVALID_CONFIG saying what to set", () => {
    for (const host of ["10.0.0.5", "0.0.0.0", "db.example.org"]) {
      expect(() => apiTransport(loadConfig({ RELEVO_HOST: host }))).toThrow(
        expect.objectContaining({
          code: ErrorCode.InvalidConfig,
          details: { env: "RELEVO_API_TLS" },
          message: expect.stringMatching(
            /not a loopback address.*RELEVO_API_TLS=on.*RELEVO_API_TLS_CERT_FILE.*RELEVO_API_TLS=off/,
          ) as unknown,
        }),
      );
    }
  });

  test("RELEVO_API_TLS=off accepts plaintext there (the start warns); on issues a certificate for RELEVO_HOST", () => {
    expect(apiTransport(loadConfig({ RELEVO_HOST: "10.0.0.5", RELEVO_API_TLS: "off" }))).toEqual({ phase: "http-plaintext-accepted" });
    expect(apiTransport(loadConfig({ RELEVO_API_TLS: "off" }))).toEqual({ phase: "http-loopback" });
    expect(apiTransport(loadConfig({ RELEVO_HOST: "10.0.0.5", RELEVO_API_TLS: "on" }))).toEqual({
      phase: "https-issued",
      addresses: ["10.0.0.5"],
    });
  });

  test("the operator's certificate files: HTTPS, in auto and on; with the key only, or with off, INVALID_CONFIG", () => {
    const files = { RELEVO_API_TLS_CERT_FILE: "api.crt", RELEVO_API_TLS_KEY_FILE: "api.key" };
    const expected = { phase: "https-files", certificateFile: path.resolve("api.crt"), keyFile: path.resolve("api.key") };
    expect(apiTransport(loadConfig({ RELEVO_HOST: "10.0.0.5", ...files }))).toEqual(expected);
    expect(apiTransport(loadConfig({ RELEVO_API_TLS: "on", ...files }))).toEqual(expected);
    const invalid = (env: NodeJS.ProcessEnv, named: string) =>
      expect(() => loadConfig(env)).toThrow(
        expect.objectContaining({ code: ErrorCode.InvalidConfig, details: expect.objectContaining({ env: named }) as unknown }),
      );
    invalid({ RELEVO_API_TLS_CERT_FILE: "api.crt" }, "RELEVO_API_TLS_KEY_FILE");
    invalid({ RELEVO_API_TLS_KEY_FILE: "api.key" }, "RELEVO_API_TLS_CERT_FILE");
    invalid({ RELEVO_API_TLS: "off", ...files }, "RELEVO_API_TLS");
    invalid({ RELEVO_API_TLS: "yes" }, "RELEVO_API_TLS");
  });

  test("the URL says https or http; an IPv6 host in brackets", () => {
    expect(apiUrl({ host: "127.0.0.1", port: 4000, https: false })).toBe("http://127.0.0.1:4000/graphql");
    expect(apiUrl({ host: "10.0.0.5", port: 4443, https: true })).toBe("https://10.0.0.5:4443/graphql");
    expect(apiUrl({ host: "::1", port: 4000, https: true })).toBe("https://[::1]:4000/graphql");
  });
});
