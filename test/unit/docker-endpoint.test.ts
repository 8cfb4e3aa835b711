import { expect } from "@jest/globals";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { ErrorCode } from "../../src/errors";
import { connectDocker, translateEngineError } from "../../src/nodes/docker/docker-client";
import {
  containerName,
  labelFilter,
  nodeContainerSpec,
  stopSignalFor,
  toolsContainerSpec,
  vanishedHome,
  volumeName,
} from "../../src/nodes/docker/container-spec";
import { parseListing, readRangesCommand, writeCommand } from "../../src/nodes/docker/file-commands";
import { makeTlsMaterial } from "../helpers/engine-forwarder";

/** The engine endpoint and what the driver asks of the engine, as data (no engine needed). */
describe("Docker driver: endpoint, container specs, file commands", () => {
  test("a socket path or unix:// URL, or tcp:// without TLS on loopback only", () => {
    const modem = (host: string, certPath = "") =>
      (connectDocker({ host, certPath }) as unknown as { modem: Record<string, unknown> }).modem;
    expect(modem("")).toMatchObject({ socketPath: "/var/run/docker.sock" });
    expect(modem("unix:///run/user/1000/docker.sock")).toMatchObject({ socketPath: "/run/user/1000/docker.sock" });
    expect(modem("tcp://127.0.0.1:2375")).toMatchObject({ protocol: "http", host: "127.0.0.1", port: 2375 });
    // Off loopback the engine's API (root on its host) would travel in clear: TLS client certificates are required.
    for (const host of ["tcp://10.1.2.3:2375", "tcp://docker.example:2375", "tcp://[2001:db8::1]:2375"]) {
      expect(() => connectDocker({ host, certPath: "" })).toThrow(expect.objectContaining({ code: "INVALID_CONFIG" }));
    }
  });

  test("a container is left behind by a vanished home only when its home label names another home that does not exist", () => {
    const exists = (home: string): boolean => home === "/homes/live";
    const labels = (home?: string): Record<string, string> => ({ "io.relevo.cluster": "c", ...(home ? { "io.relevo.home": home } : {}) });
    expect(vanishedHome(labels("/homes/gone"), "/homes/new", exists)).toBe("/homes/gone");
    expect(vanishedHome(labels("/homes/live"), "/homes/new", exists)).toBeNull(); // another live home: adopted as before
    expect(vanishedHome(labels("/homes/new"), "/homes/new", exists)).toBeNull(); // our own (even while our home is being made)
    expect(vanishedHome(labels(), "/homes/new", exists)).toBeNull(); // docker compose's: no home label
    expect(vanishedHome(labels("adopted"), "/homes/new", exists)).toBeNull(); // a label that names no path Relevo writes
  });

  test("TLS client certificates are read from the directory and checked at once", async () => {
    const material = await makeTlsMaterial();
    try {
      const certs = material.clientCertPath;
      const modem = (connectDocker({ host: "tcp://engine.example:2376", certPath: certs }) as unknown as { modem: Record<string, unknown> })
        .modem;
      expect(modem).toMatchObject({
        protocol: "https",
        host: "engine.example",
        port: 2376,
        ca: readFileSync(path.join(certs, "ca.pem")),
        cert: readFileSync(path.join(certs, "cert.pem")),
        key: readFileSync(path.join(certs, "key.pem")),
      });
      // A key of another certificate, or a file that is not PEM: INVALID_CONFIG now, not a failed request later.
      const mixed = mkdtempSync(path.join(os.tmpdir(), "relevo-certs-"));
      try {
        copyFileSync(path.join(certs, "ca.pem"), path.join(mixed, "ca.pem"));
        copyFileSync(path.join(certs, "cert.pem"), path.join(mixed, "cert.pem"));
        copyFileSync(path.join(material.strangerCertPath, "key.pem"), path.join(mixed, "key.pem"));
        expect(() => connectDocker({ host: "tcp://127.0.0.1:2376", certPath: mixed })).toThrow(
          expect.objectContaining({ code: ErrorCode.InvalidConfig }),
        );
        writeFileSync(path.join(mixed, "key.pem"), "not a key");
        expect(() => connectDocker({ host: "tcp://127.0.0.1:2376", certPath: mixed })).toThrow(
          expect.objectContaining({ code: ErrorCode.InvalidConfig, message: expect.stringContaining("RELEVO_DOCKER_CERT_PATH") }),
        );
      } finally {
        rmSync(mixed, { recursive: true, force: true });
      }
    } finally {
      await material.remove();
    }
  });

  test("the engine's failures as Relevo's codes: unreachable, TLS refused, a certificate directory without certificates", () => {
    const context = { action: "inspect container", endpoint: "tcp://127.0.0.1:2376", tls: true };
    const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:2376"), { code: "ECONNREFUSED" });
    expect(translateEngineError(refused, context)).toMatchObject({
      code: ErrorCode.DockerUnavailable,
      message: expect.stringContaining("RELEVO_DOCKER_HOST"),
    });
    expect(translateEngineError(refused, context).message).not.toContain("RELEVO_DOCKER_CERT_PATH");
    // A TLS engine refusing the client's certificate resets the connection once the handshake is over.
    const reset = Object.assign(new Error("socket hang up"), { code: "ECONNRESET" });
    expect(translateEngineError(reset, context)).toMatchObject({
      code: ErrorCode.DockerUnavailable,
      message: expect.stringMatching(/does not answer.*TLS.*RELEVO_DOCKER_CERT_PATH/),
    });
    expect(translateEngineError(reset, { ...context, tls: false }).message).not.toContain("TLS");
    for (const code of [
      "ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED",
      "ERR_SSL_TLSV1_ALERT_UNKNOWN_CA",
      "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
      "ERR_TLS_CERT_ALTNAME_INVALID",
      "SELF_SIGNED_CERT_IN_CHAIN",
    ]) {
      expect(translateEngineError(Object.assign(new Error(code), { code }), context)).toMatchObject({
        code: ErrorCode.DockerUnavailable,
        message: expect.stringMatching(/TLS handshake .* RELEVO_DOCKER_CERT_PATH/),
      });
    }
    const notFound = Object.assign(new Error("(HTTP code 404) no such container"), {
      statusCode: 404,
      json: { message: "No such container: x" },
    });
    expect(translateEngineError(notFound, context)).toMatchObject({ code: ErrorCode.CommandFailed });
    const empty = mkdtempSync(path.join(os.tmpdir(), "relevo-certs-"));
    try {
      expect(() => connectDocker({ host: "tcp://127.0.0.1:2376", certPath: empty })).toThrow(
        expect.objectContaining({
          code: ErrorCode.InvalidConfig,
          message: expect.stringMatching(/RELEVO_DOCKER_CERT_PATH .* ca\.pem is unreadable \(ENOENT\)/),
        }),
      );
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  test("a node's container: PostgreSQL's own stop signal, host networking, no restart policy; its tools container idles on the same mounts", () => {
    const plan = {
      naming: { cluster: "prod", node: "node1" },
      image: "postgres:15",
      home: "/var/lib/relevo",
      mounts: [
        {
          Type: "volume" as const,
          Source: volumeName({ cluster: "prod", node: "node1" }),
          Target: "/var/lib/postgresql/data",
          ReadOnly: false,
        },
      ],
    };
    const node = nodeContainerSpec(plan);
    expect(node).toMatchObject({
      name: "relevo-prod-node1",
      Image: "postgres:15",
      Cmd: ["postgres"],
      User: "postgres",
      StopSignal: "SIGINT",
    });
    expect(node.HostConfig).toMatchObject({ NetworkMode: "host", RestartPolicy: { Name: "no" }, Mounts: plan.mounts });
    expect(node.Labels).toEqual({
      "io.relevo.cluster": "prod",
      "io.relevo.node": "node1",
      "io.relevo.role": "node",
      "io.relevo.home": "/var/lib/relevo",
    });
    const tools = toolsContainerSpec(plan);
    expect(tools).toMatchObject({ name: containerName(plan.naming, "tools"), Entrypoint: ["sleep", "infinity"], User: "postgres" });
    expect(tools.HostConfig).toMatchObject({ RestartPolicy: { Name: "no" }, Mounts: plan.mounts });
    expect(labelFilter(plan.naming, "node")).toEqual({ label: ["io.relevo.cluster=prod", "io.relevo.node=node1", "io.relevo.role=node"] });
    expect([stopSignalFor("smart"), stopSignalFor("fast"), stopSignalFor("immediate")]).toEqual(["SIGTERM", "SIGINT", "SIGQUIT"]);
  });

  test("file commands keep paths out of the script text, and parse find's listing", () => {
    const hostile = "/var/lib/postgresql/data/x'; rm -rf / #";
    for (const argv of [
      readRangesCommand(hostile, [{ offset: 0, length: 8192 }]),
      writeCommand(hostile, { mode: 0o600, fresh: true, durable: true }),
    ]) {
      expect(argv.slice(0, 2)).toEqual(["sh", "-c"]);
      expect(argv[2]).not.toContain(hostile);
      expect(argv).toContain(hostile);
    }
    const listing = Buffer.from(
      "f 10 1700000000.5 conf.d/a b.conf\0d 4096 1700000001.0 conf.d\0l 5 1700000002.25 pg_wal/link\0p 0 1700000003.0 fifo\0",
    );
    expect(parseListing(listing)).toEqual([
      { type: "file", size: 10, mtimeMs: 1700000000500, relative: "conf.d/a b.conf" },
      { type: "directory", size: 4096, mtimeMs: 1700000001000, relative: "conf.d" },
      { type: "symlink", size: 5, mtimeMs: 1700000002250, relative: "pg_wal/link" },
    ]);
  });
});
