import { X509Certificate } from "node:crypto";
import { fixedTrust } from "../../src/postgres/connection";
import { servedCertificate } from "../../src/postgres/served-certificate";
import { expect } from "@jest/globals";
import { Readable } from "node:stream";
import { Client } from "pg";
import type { NodeDriver, NodeRef, NodeTlsSource } from "../../src/nodes/node-driver";
import { ErrorCode } from "../../src/errors";
import { loadConfig } from "../../src/config/config";
import { CertificateAuthority } from "../../src/tls/certificate-authority";
import { nodeTlsSource } from "../../src/tls/node-tls";
import { serverTlsSettings } from "../../src/postgres/tls-settings";
import { tempHome } from "./home";
import { freePort } from "./ports";

export interface ConformanceTarget {
  readonly label: string;
  /** A fresh driver over a data home of its own, issuing the nodes' certificates from `tls`. */
  makeDriver(tls: NodeTlsSource): Promise<NodeDriver>;
}

const PASSWORD = "conformance-password-0123456789";

/**
 * One suite every NodeDriver must pass unchanged (local now, docker next).
 * It drives a node through its whole life the way bootstrap, failover and
 * backups will: initdb through `exec` (offline), configuration through file
 * writes, start / stop / pause / resume / kill, SQL on the node's port, and
 * failures that surface exit codes and stderr.
 */
export function describeDriverConformance(target: ConformanceTarget): void {
  describe(`NodeDriver conformance: ${target.label}`, () => {
    let driver: NodeDriver;
    let node: NodeRef;
    let ca: CertificateAuthority;

    beforeAll(async () => {
      ca = await CertificateAuthority.load(loadConfig({}, { home: await tempHome("conformance-ca") }));
      driver = await target.makeDriver(nodeTlsSource(ca));
      node = { name: "conformance1", host: "127.0.0.1", port: await freePort() };
      await driver.checkPrerequisites();
    });

    afterAll(async () => {
      await driver.destroy(node).catch(() => undefined);
    });

    /** A client of the node's superuser, TLS verify-full against `trusted` (the driver's CA); `limits` bound its connect or its queries. */
    const nodeClient = (limits: { connectionTimeoutMillis?: number; query_timeout?: number }, trusted = ca.certificatePem): Client =>
      new Client({
        host: node.host,
        port: node.port,
        user: "postgres",
        password: PASSWORD,
        database: "postgres",
        ssl: { ca: trusted, rejectUnauthorized: true },
        ...limits,
      });

    const sql = async (text: string): Promise<unknown[]> => {
      const client = nodeClient({ connectionTimeoutMillis: 3000 });
      await client.connect();
      try {
        return (await client.query<Record<string, unknown>>(text)).rows;
      } finally {
        await client.end();
      }
    };

    test("an unprovisioned node is absent", async () => {
      expect(await driver.state(node)).toEqual({ phase: "absent" });
      expect(await driver.readFile(node, "PG_VERSION")).toBeNull();
      expect(await driver.listFiles(node, ".")).toEqual([]);
      expect(await driver.foreignRemains(node)).toEqual([]);
    });

    test("provision is idempotent and leaves an empty, stopped node", async () => {
      await driver.provision(node);
      await driver.provision(node);
      expect(await driver.state(node)).toEqual({ phase: "stopped" });
    });

    test("exec (offline) runs initdb as the PostgreSQL user, with stdin", async () => {
      const result = await driver.exec(
        node,
        [
          "initdb",
          "-D",
          driver.dataDirectory(node),
          "--data-checksums",
          "--auth=scram-sha-256",
          "--username=postgres",
          "--pwfile=/dev/stdin",
        ],
        { mode: "offline", stdin: `${PASSWORD}\n`, timeoutMs: 60000 },
      );
      expect(result.exitCode).toBe(0);
      expect((await driver.readFile(node, "PG_VERSION"))?.toString().trim()).toBe("15");
    });

    test("files: write (atomic, 0600), read, list, remove — confined to the data directory", async () => {
      await driver.writeFile(node, "conf.d/extra.conf", "# nothing\n");
      expect((await driver.readFile(node, "conf.d/extra.conf"))?.toString()).toBe("# nothing\n");
      expect(await driver.readSmallFile(node, "conf.d/extra.conf", 10)).toEqual({ state: "read", content: Buffer.from("# nothing\n") });
      await driver.writeFile(node, "conf.d/fresh.conf", "# fresh\n", { fresh: true });
      expect((await driver.readFile(node, "conf.d/fresh.conf"))?.toString()).toBe("# fresh\n");
      await expect(driver.writeFile(node, "conf.d/fresh.conf", "# again\n", { fresh: true })).rejects.toThrow();
      expect((await driver.readFile(node, "conf.d/fresh.conf"))?.toString()).toBe("# fresh\n");
      expect(await driver.readSmallFile(node, "conf.d/extra.conf", 9)).toEqual({ state: "too-large", size: 10 });
      expect(await driver.readSmallFile(node, "conf.d/absent.conf", 10)).toEqual({ state: "absent" });
      await expect(driver.readSmallFile(node, "../../etc/passwd", 10)).rejects.toMatchObject({ code: ErrorCode.BadUserInput });
      const listed = await driver.listFiles(node, "conf.d");
      expect(listed).toEqual([
        expect.objectContaining({ path: "conf.d/extra.conf", type: "file", size: 10 }),
        expect.objectContaining({ path: "conf.d/fresh.conf", type: "file", size: 8 }),
      ]);
      await driver.removeFiles(node, ["conf.d"]);
      expect(await driver.readFile(node, "conf.d/extra.conf")).toBeNull();
      await expect(driver.readFile(node, "../../etc/passwd")).rejects.toMatchObject({ code: ErrorCode.BadUserInput });
      const conf = (await driver.readFile(node, "postgresql.conf"))!.toString();
      await driver.writeFile(
        node,
        "postgresql.conf",
        // TLS with the files the driver writes before each start, where it says they are (outside the data directory).
        `${conf}\nport = ${node.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n${serverTlsSettings(driver.tlsPaths(node)).join("\n")}\n`,
      );
    });

    test("streams: a large file written from a stream reads back identical, in chunks; directories are made owned", async () => {
      const content = Buffer.alloc(5 * 1024 * 1024 + 17, 7);
      content.write("relevo", 4096);
      await driver.writeStream(node, "stream-test/big.bin", Readable.from([content.subarray(0, 1000), content.subarray(1000)]));
      const stream = await driver.openRead(node, "stream-test/big.bin");
      const chunks: Buffer[] = [];
      for await (const chunk of stream!) chunks.push(chunk as Buffer);
      expect(chunks.length).toBeGreaterThan(1);
      expect(Buffer.concat(chunks).equals(content)).toBe(true);
      expect(await driver.openRead(node, "stream-test/missing")).toBeNull();
      // Chunked reads: in order, at most `inFlight` held at once, each chunk valid until handed back.
      const copies: Buffer[] = [];
      let held = 0;
      let mostHeld = 0;
      // The first chunk is held until a second one comes (or 5 s pass): a reader that reads ahead must deliver it meanwhile, however slow the disk.
      let secondCame!: () => void;
      const second = new Promise<void>((resolve) => (secondCame = resolve));
      const found = await driver.readChunks(node, "stream-test/big.bin", { chunkSize: 1024 * 1024, inFlight: 2 }, async (chunk) => {
        held += 1;
        mostHeld = Math.max(mostHeld, held);
        if (held === 2) secondCame();
        const copy = Buffer.from(chunk);
        copies.push(copy);
        await (copies.length === 1
          ? Promise.race([second, new Promise((resolve) => setTimeout(resolve, 5000))])
          : new Promise((resolve) => setTimeout(resolve, 5)));
        expect(chunk.equals(copy)).toBe(true); // not overwritten while held
        held -= 1;
      });
      expect(found).toBe(true);
      expect(copies.length).toBe(6);
      expect(mostHeld).toBe(2);
      expect(Buffer.concat(copies).equals(content)).toBe(true);
      expect(await driver.readChunks(node, "stream-test/missing", { chunkSize: 1024, inFlight: 1 }, () => Promise.resolve())).toBe(false);
      await expect(
        driver.readChunks(node, "stream-test/big.bin", { chunkSize: 1024 * 1024, inFlight: 2 }, () =>
          Promise.reject(new Error("consumer failed")),
        ),
      ).rejects.toThrow("consumer failed");
      // Ranges: in order, split into buffer-sized pieces, past the end read as zeros.
      const ranged: Buffer[] = [];
      const ranges = [
        { offset: 10, length: 5 },
        { offset: 1024 * 1024 - 3, length: 1024 * 1024 + 6 },
        { offset: content.length - 4, length: 10 },
      ];
      expect(
        await driver.readRanges(node, "stream-test/big.bin", ranges, { chunkSize: 1024 * 1024, inFlight: 2 }, (chunk) => {
          ranged.push(Buffer.from(chunk));
          return Promise.resolve();
        }),
      ).toBe(true);
      expect(ranged.every((chunk) => chunk.length <= 1024 * 1024)).toBe(true);
      expect(
        Buffer.concat(ranged).equals(
          Buffer.concat([...ranges.map((r) => content.subarray(r.offset, r.offset + r.length)), Buffer.alloc(6)]),
        ),
      ).toBe(true);
      expect(await driver.readRanges(node, "stream-test/missing", ranges, { chunkSize: 1024, inFlight: 1 }, () => Promise.resolve())).toBe(
        false,
      );
      await driver.makeDirectory(node, "stream-test/a/b");
      expect(await driver.listFiles(node, "stream-test/a")).toEqual([
        expect.objectContaining({ path: "stream-test/a/b", type: "directory" }),
      ]);
      await driver.removeFiles(node, ["stream-test"]);
      expect(await driver.listFiles(node, "stream-test")).toEqual([]);
    });

    test("start makes the server accept SQL; start again is a no-op", async () => {
      await driver.start(node, { timeoutMs: 60000 });
      const state = await driver.state(node);
      expect(state.phase).toBe("running");
      await driver.start(node, { timeoutMs: 60000 });
      expect(await sql("SELECT 1 AS one")).toEqual([{ one: 1 }]);
      // The server took the certificate, the key (PostgreSQL refuses a key others may read, or another user's) and the
      // CA the driver wrote before the start; a client verifying the host against the CA gets TLS.
      expect(await sql("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).toEqual([{ ssl: true }]);
      // Outside the data directory: nothing a base backup, a rewind or a backup copies holds them.
      const { certificate, key, ca: caFile } = driver.tlsPaths(node);
      const tlsNames = [certificate, key, caFile].map((file) => file.split("/").pop());
      expect((await driver.listFiles(node, ".")).filter((entry) => tlsNames.includes(entry.path.split("/").pop()))).toEqual([]);
      const view = await driver.describe(node);
      expect(view).toMatchObject({ driver: driver.kind, state, dataDirectory: driver.dataDirectory(node) });
    });

    test("renewTls writes a new certificate beside the running server and returns what it replaced; installTls puts that back", async () => {
      const first = await driver.renewTls(node);
      expect(first.previous).not.toBeNull();
      expect(first.previous!.keyPem).not.toBe(first.installed.keyPem);
      expect(first.installed.caPem).toBe(ca.certificatePem);
      // What it reads back is what it wrote, byte for byte.
      expect((await driver.renewTls(node)).previous).toEqual(first.installed);
      await driver.installTls(node, first.previous!);
      const again = await driver.renewTls(node);
      expect(again.previous).toEqual(first.previous);
      // A reload takes the files the driver wrote: new clients get the new certificate, with no restart.
      await sql("SELECT pg_reload_conf()");
      const wanted = new X509Certificate(again.installed.certificatePem).serialNumber;
      const deadline = Date.now() + 10_000;
      let served = "";
      while (served !== wanted && Date.now() < deadline) {
        served = new X509Certificate(await servedCertificate(node, { trust: fixedTrust(ca.certificatePem), timeoutMs: 3000 })).serialNumber;
      }
      expect(served).toBe(wanted);
    });

    test("exec (online) surfaces exit codes and stderr", async () => {
      const ok = await driver.exec(node, ["pg_controldata", driver.dataDirectory(node)], { mode: "online" });
      expect(ok.stdout).toMatch(/Database cluster state:\s+in production/);
      await expect(driver.exec(node, ["pg_controldata", "/nonexistent"], { mode: "online" })).rejects.toMatchObject({
        code: ErrorCode.CommandFailed,
        details: expect.objectContaining({ exitCode: 1, stderr: expect.stringContaining("/nonexistent") }),
      });
      const failed = await driver.exec(node, ["pg_controldata", "/nonexistent"], { mode: "online", allowFailure: true });
      expect(failed.exitCode).not.toBe(0);
      await expect(driver.exec(node, ["/bin/sh", "-c", "id"], { mode: "online" })).rejects.toMatchObject({ code: ErrorCode.BadUserInput });
    });

    test("pause freezes the whole server (new and open connections time out), resume thaws it", async () => {
      const open = nodeClient({ query_timeout: 1000 });
      await open.connect();
      await driver.pause(node);
      expect((await driver.state(node)).phase).toBe("paused");
      // The backend serving an open connection is frozen too.
      await expect(open.query("SELECT 1")).rejects.toThrow(/timeout/i);
      open.end().catch(() => undefined);
      const client = nodeClient({ connectionTimeoutMillis: 1000 });
      await expect(client.connect()).rejects.toThrow();
      await driver.resume(node);
      expect((await driver.state(node)).phase).toBe("running");
      expect(await sql("SELECT 2 AS two")).toEqual([{ two: 2 }]);
    });

    test("stop (fast) shuts the server down cleanly; stop again is a no-op", async () => {
      await driver.stop(node, { mode: "fast", timeoutMs: 30000 });
      expect(await driver.state(node)).toEqual({ phase: "stopped" });
      await driver.stop(node, { mode: "fast", timeoutMs: 30000 });
      const control = await driver.exec(node, ["pg_controldata", driver.dataDirectory(node)], { mode: "offline" });
      expect(control.stdout).toMatch(/Database cluster state:\s+shut down/);
      // Everything a node's life left in its storage (a server log among it) is the driver's own.
      expect(await driver.foreignRemains(node)).toEqual([]);
    });

    test("releasing a stopped node's helpers keeps its data; offline work afterwards makes what it needs again", async () => {
      await driver.releaseHelpers(node);
      await driver.releaseHelpers(node); // idempotent
      expect(await driver.state(node)).toEqual({ phase: "stopped" });
      const control = await driver.exec(node, ["pg_controldata", driver.dataDirectory(node)], { mode: "offline" });
      expect(control.stdout).toMatch(/Database cluster state:\s+shut down/);
      expect((await driver.readFile(node, "PG_VERSION"))?.toString().trim()).toBe("15");
    });

    test("kill ends the server and all its processes at once, even when paused", async () => {
      await driver.start(node, { timeoutMs: 60000 });
      await driver.pause(node);
      await driver.kill(node);
      expect(await driver.state(node)).toEqual({ phase: "stopped" });
      const control = await driver.exec(node, ["pg_controldata", driver.dataDirectory(node)], { mode: "offline" });
      expect(control.stdout).toMatch(/Database cluster state:\s+in production/); // not shut down cleanly
      await driver.start(node, { timeoutMs: 60000 }); // crash recovery
      expect(await sql("SELECT 3 AS three")).toEqual([{ three: 3 }]);
    });

    test("destroy removes the node and its data", async () => {
      await driver.destroy(node);
      expect(await driver.state(node)).toEqual({ phase: "absent" });
    });
  });
}
