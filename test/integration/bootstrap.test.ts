import type { ClusterEvent } from "../../src/events/event-map";
import { LEAF_VALIDITY_DAYS } from "../../src/tls/certificate-requests";
import { X509Certificate } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { nodeCertificateHolder } from "../../src/cluster/node-certificate";
import { createNodeDriver } from "../../src/nodes/create-driver";
import { withNodeClient } from "../../src/postgres/connection";
import { describeOutcome } from "../../src/tls/certificate-holder";
import { nodeTlsSource } from "../../src/tls/node-tls";
import { splitCertificates } from "../../src/tls/pem-bundle";
import { projectRoot } from "../../src/util/project-root";
import { libpqLogin, postmasterStart, servedSerial } from "../helpers/certificates";
import { cliEnvFor } from "../helpers/cli-env";
import { nodeTlsFile, trustCa } from "../helpers/tls";
import { CertificateRotation } from "../../src/cluster/certificate-rotation";
import type { NodeRef, NodeTlsSource } from "../../src/nodes/node-driver";
import { startReconnecter, startWriter } from "../helpers/writer";
import { libpqTlsParameters, uriTlsParameters } from "../../src/postgres/tls-settings";
import { loadConfig } from "../../src/config/config";
import { CertificateAuthority } from "../../src/tls/certificate-authority";
import { tempHome } from "../helpers/home";
import { servedCertificate } from "../helpers/tls";
import { servedRedisCertificate } from "../../src/redis/redis-certificate";
import { OwnRedisClientCertificate } from "../../src/redis/redis-tls";
import { certificateFacts, withHolderLock } from "../../src/tls/issued-certificates";
import { expect } from "@jest/globals";
import { execFile } from "node:child_process";
import { stat } from "node:fs/promises";
import { promisify } from "node:util";
import { bootstrapCluster } from "../../src/cluster/bootstrap";
import { createLogger } from "../../src/log";
import { secretsFile } from "../../src/secrets/secrets-store";
import { eventually, useTestCluster } from "../helpers/service";
import { sqlOn } from "../helpers/sql";
import { connectionUri, fixedTrust } from "../../src/postgres/connection";
import { describeOnEachDriver } from "../helpers/drivers";
import { FENCE_MARKER } from "../../src/postgres/managed-settings";

const run = promisify(execFile);
const BIN = path.join(projectRoot(), "bin/relevo");

describeOnEachDriver("bootstrap: a primary and a streaming replica", (driver, overrides) => {
  const cluster = useTestCluster("bootstrap", overrides);

  const primary = () => cluster.service.nodes[0]!;
  const replica = () => cluster.service.nodes[1]!;

  test("the replica streams from the primary over its own slot, with an application_name", async () => {
    const senders = await sqlOn<{ application_name: string; state: string }>(
      primary(),
      cluster.service.secrets,
      "SELECT application_name, state FROM pg_stat_replication WHERE application_name = 'node2'",
    );
    expect(senders).toEqual([{ application_name: "node2", state: "streaming" }]);
    const slots = await sqlOn<{ slot_name: string; active: boolean }>(
      primary(),
      cluster.service.secrets,
      "SELECT slot_name, active FROM pg_replication_slots WHERE slot_name = 'relevo_node2'",
    );
    expect(slots).toEqual([{ slot_name: "relevo_node2", active: true }]);
    const receiver = await sqlOn<{ status: string; slot_name: string }>(
      replica(),
      cluster.service.secrets,
      "SELECT status, slot_name FROM pg_stat_wal_receiver",
    );
    expect(receiver).toEqual([{ status: "streaming", slot_name: "relevo_node2" }]);
  });

  test("a row written on the primary appears on the replica", async () => {
    await sqlOn(primary(), cluster.service.secrets, "CREATE TABLE bootstrap_check (id int PRIMARY KEY, note text)");
    await sqlOn(primary(), cluster.service.secrets, "INSERT INTO bootstrap_check VALUES (1, 'written on the primary')");
    const rows = await eventually(async () => {
      const found = await sqlOn(replica(), cluster.service.secrets, "SELECT id, note FROM bootstrap_check").catch(() => []);
      return found.length > 0 ? found : undefined;
    });
    expect(rows).toEqual([{ id: 1, note: "written on the primary" }]);
  });

  test("the primary has data checksums, SCRAM auth, a bounded slot WAL size, and the roles pg_rewind needs", async () => {
    const settings = await sqlOn<{ name: string; setting: string }>(
      primary(),
      cluster.service.secrets,
      "SELECT name, setting FROM pg_settings WHERE name IN ('data_checksums','password_encryption','wal_level','hot_standby','max_slot_wal_keep_size','listen_addresses') ORDER BY name",
    );
    expect(Object.fromEntries(settings.map((s) => [s.name, s.setting]))).toEqual({
      data_checksums: "on",
      hot_standby: "on",
      listen_addresses: "127.0.0.1",
      max_slot_wal_keep_size: String(4 * 1024), // 4GB in MB
      password_encryption: "scram-sha-256",
      wal_level: "replica",
    });
    const rewind = await sqlOn<{ ok: boolean }>(
      primary(),
      cluster.service.secrets,
      "SELECT has_function_privilege('rewinder', 'pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)', 'EXECUTE') AND has_function_privilege('rewinder', 'pg_catalog.pg_ls_dir(text, boolean, boolean)', 'EXECUTE') AS ok",
    );
    expect(rewind).toEqual([{ ok: true }]);
    const hba = await sqlOn<{ type: string; database: string[]; user_name: string[]; auth_method: string }>(
      primary(),
      cluster.service.secrets,
      "SELECT type, database, user_name, auth_method FROM pg_hba_file_rules ORDER BY line_number",
    );
    expect(hba.every((rule) => rule.auth_method === "scram-sha-256" && rule.type === "hostssl")).toBe(true);
    expect(hba.map((rule) => `${rule.database.join(",")}:${rule.user_name.join(",")}`)).toEqual([
      "replication:replicator",
      "postgres:rewinder",
      "relevo:relevo",
      "all:postgres",
    ]);
  });

  test("PostgreSQL runs as the postgres OS user when Relevo is root, secrets are 0600", async () => {
    const view = await cluster.service.driver.describe(primary());
    expect(view.state.phase).toBe("running");
    const pid = view.state.phase === "running" ? view.state.pid : 0;
    if (driver === "docker") {
      // PID 1 of the node's container is the postmaster, as the image's postgres user.
      expect(view.container).toMatchObject({ id: view.containerId, status: "running", restartCount: 0 });
      const { stdout } = await run("docker", ["exec", view.containerId!, "sh", "-c", "id -un; cat /proc/1/cmdline | tr '\\0' ' '"]);
      expect(stdout.trim().split("\n")).toEqual(["postgres", expect.stringMatching(/^postgres\b/)]);
      const { stdout: uid } = await run("ps", ["-o", "uid=", "-p", String(pid)]);
      expect(Number(uid.trim())).toBe((await cluster.service.driver.fileOwner())?.uid ?? process.getuid?.());
    } else {
      const { stdout } = await run("ps", ["-o", "user=", "-p", String(pid)]);
      expect(stdout.trim()).toBe(process.getuid?.() === 0 ? "postgres" : (await run("id", ["-un"])).stdout.trim());
    }
    expect((await stat(secretsFile(cluster.config.home))).mode & 0o777).toBe(0o600);
  });

  test("TLS on every node: a plaintext login is refused, a client trusting another CA fails verify-full, the CA's passes", async () => {
    const password = { PGPASSWORD: cluster.service.secrets.superuserPassword };
    const credentials = { user: "postgres", password: cluster.service.secrets.superuserPassword, database: "postgres" };
    for (const node of [primary(), replica()]) {
      const uri = (params: Record<string, string>) => connectionUri([node], { ...credentials, trustedCa: fixedTrust("") }, params);
      // hostssl lines only: without TLS no line of pg_hba.conf matches.
      await expect(
        run("psql", [uri({ sslmode: "disable" }), "-XAtc", "SELECT 1"], { env: { ...process.env, ...password } }),
      ).rejects.toMatchObject({
        stderr: expect.stringMatching(/no pg_hba\.conf entry for host .* no encryption/),
      });
      const other = await CertificateAuthority.load(loadConfig({}, { home: await tempHome("other-ca") }));
      await expect(run("psql", [uri(uriTlsParameters(other.certificateFile)), "-XAtc", "SELECT 1"])).rejects.toMatchObject({
        stderr: expect.stringMatching(/certificate verify failed/),
      });
      // verify-full with channel binding, as Relevo's tools connect: the session is TLS.
      const { stdout } = await run("psql", [
        uri({ ...libpqTlsParameters(cluster.service.caFile) }),
        "-XAtc",
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
      ]);
      expect(stdout.trim()).toBe("t");
    }
  });

  test("replication, the archiver's stream and Relevo's own sessions run over TLS (pg_stat_ssl)", async () => {
    const sessions = await eventually(async () => {
      const rows = await sqlOn<{ application_name: string; ssl: boolean }>(
        primary(),
        cluster.service.secrets,
        "SELECT r.application_name, s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) ORDER BY 1",
      );
      return rows.some((row) => row.application_name === "relevo_archiver") ? rows : undefined;
    });
    expect(sessions).toEqual([
      { application_name: "node2", ssl: true },
      { application_name: "relevo_archiver", ssl: true },
    ]);
    // Prisma's pool on database relevo keeps its sessions open: Relevo's NodeClients, with TLS.
    const relevo = await eventually(async () => {
      const rows = await sqlOn<{ ssl: boolean }>(
        primary(),
        cluster.service.secrets,
        "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'relevo'",
      );
      return rows.length > 0 ? rows : undefined;
    });
    expect(relevo.every((row) => row.ssl)).toBe(true);
  });

  test("each node serves a certificate of its own, for its address, its key outside the data directory", async () => {
    const serials = new Set<string>();
    for (const node of [primary(), replica()]) {
      const served = await servedCertificate(node, cluster.service.secrets.superuserPassword);
      expect(served.subject.CN).toBe(node.name);
      expect(served.subjectaltname).toBe(`IP Address:${node.host}`);
      serials.add(served.serialNumber);
      const paths = cluster.service.driver.tlsPaths(node);
      expect(paths.key.startsWith(cluster.service.driver.dataDirectory(node))).toBe(false);
    }
    expect(serials.size).toBe(2);
  });

  test("bootstrap again is idempotent: nodes already running are left as they are", async () => {
    const outcomes = await bootstrapCluster(
      {
        config: cluster.config,
        driver: cluster.service.driver,
        secrets: cluster.service.secrets,
        trustedCa: cluster.service.trustedCa,
        logger: createLogger({ level: "silent" }),
      },
      cluster.service.nodes,
    );
    expect(outcomes.map((o) => `${o.node.name}:${o.phase}`)).toEqual(["node1:already-running", "node2:already-running"]);
  });

  test("libpq clients reach the primary through a multi-host URI with target_session_attrs=read-write", async () => {
    const uri = connectionUri(
      [replica(), primary()],
      { user: "postgres", password: cluster.service.secrets.superuserPassword, database: "postgres", trustedCa: cluster.service.trustedCa },
      { target_session_attrs: "read-write", ...uriTlsParameters(cluster.service.caFile) },
    );
    const { stdout } = await run("psql", [uri, "-Atc", "SELECT pg_is_in_recovery(), current_setting('port')"]);
    expect(stdout.trim()).toBe(`f|${primary().port}`);
  });

  test("certificates rotate under a writer: every acknowledged row kept, no restart, each node serves a new serial", async () => {
    const { secrets } = cluster.service;
    const nodes = [primary(), replica()];
    const startedBefore = await Promise.all(nodes.map((node) => postmasterStart(node, secrets)));
    const serialsBefore = await Promise.all(nodes.map((node) => servedSerial(node, secrets)));
    await sqlOn(primary(), secrets, "CREATE TABLE rotation_ledger (id bigserial PRIMARY KEY, note text, pad text)");
    const writer = startWriter(primary(), secrets.superuserPassword, "rotation_ledger");
    // Beside the open session, new ones all along (as a pool makes them): none may fail while the files change.
    const reconnecter = startReconnecter(nodes, secrets.superuserPassword);
    // Both stop whatever the rotation's fate: a failed test leaves no client behind.
    const rotated = await run("node", [BIN, "certificates", "rotate"], { env: cliEnvFor(cluster.config) }).finally(() =>
      Promise.all([writer.stop(), reconnecter.stop()]),
    );
    const written = await writer.stop();
    expect(written).toBeGreaterThan(0);
    const reconnected = await reconnecter.stop();
    expect(reconnected.failures).toEqual([]);
    expect(reconnected.sessions).toBeGreaterThan(10);
    expect(rotated.stdout).toMatch(/node:node1: renewed, serves [0-9A-F]+ \(was [0-9A-F]+\)/);
    expect(rotated.stdout).toMatch(/node:node2: renewed/);
    // Relevo's Redis too, without a restart: CONFIG SET of its TLS files, then a new connection is served the new one.
    const redisServed = certificateFacts(await servedRedisCertificate(cluster.service.redisEndpoint)).serial;
    expect(rotated.stdout).toContain(`redis:server: renewed, serves ${redisServed}`);
    expect(await cluster.service.redis.ping()).toBe("PONG");
    // Through the API, audited like every mutation.
    const audited = (await cluster.service.events.page({ first: 20, kinds: ["api:mutation"] })).events as ClusterEvent<"api:mutation">[];
    expect(audited.some((event) => event.data.fields.includes("rotateCertificates"))).toBe(true);

    const serialsAfter = await Promise.all(nodes.map((node) => servedSerial(node, secrets)));
    for (const [index, serial] of serialsAfter.entries()) {
      expect(serial).not.toBe(serialsBefore[index]);
      expect(rotated.stdout).toContain(`serves ${serial}`);
    }
    expect(await Promise.all(nodes.map((node) => postmasterStart(node, secrets)))).toEqual(startedBefore);
    const count = "SELECT count(*)::int AS n FROM rotation_ledger";
    expect((await sqlOn<{ n: number }>(primary(), secrets, count))[0]!.n).toBe(written);
    await eventually(async () => ((await sqlOn<{ n: number }>(replica(), secrets, count))[0]!.n === written ? true : undefined));
    // The replica kept streaming; the list shows what each node serves.
    expect(await sqlOn(replica(), secrets, "SELECT status FROM pg_stat_wal_receiver")).toEqual([{ status: "streaming" }]);
    const listed = JSON.parse((await run("node", [BIN, "certificates", "list", "--json"], { env: cliEnvFor(cluster.config) })).stdout) as {
      members: Array<{ name: string; certificate: { serial: string; subject: string; subjectAltNames: string[] } }>;
    };
    expect(listed.members.map((member) => [member.name, member.certificate.serial, member.certificate.subject])).toEqual(
      nodes.map((node, index) => [node.name, serialsAfter[index], `CN=${node.name}`]),
    );
  });

  test("a certificate PostgreSQL refuses on reload: the node keeps serving its previous one, its files are put back, it is reported", async () => {
    const { secrets } = cluster.service;
    const ca = await CertificateAuthority.load(cluster.config);
    const good = nodeTlsSource(ca);
    // A certificate with another certificate's key: PostgreSQL logs "check of private key failed" and keeps its context.
    const mismatched: NodeTlsSource = {
      get caPem() {
        return good.caPem;
      },
      serverCertificate: async (node) => ({
        certificatePem: (await good.serverCertificate(node)).certificatePem,
        keyPem: (await good.serverCertificate(node)).keyPem,
      }),
    };
    const faultyDriver = createNodeDriver(cluster.config, { tls: mismatched });
    try {
      const before = await servedSerial(replica(), secrets);
      const holder = nodeCertificateHolder(
        {
          driver: faultyDriver,
          superuser: { user: "postgres", password: secrets.superuserPassword, database: "postgres", trustedCa: cluster.service.trustedCa },
          timeoutMs: cluster.config.nodeTimeoutMs,
          home: cluster.config.home,
        },
        replica(),
      );
      const outcome = await holder.renew();
      expect(outcome).toMatchObject({ phase: "refused", holder: "node:node2", serial: before });
      expect(describeOutcome(outcome)).toMatch(/^node:node2: REFUSED, PostgreSQL did not load the new certificate/);
      expect(await servedSerial(replica(), secrets)).toBe(before);
      // The files are the previous ones again: the node's next reload or start meets no bad file.
      const file = await nodeTlsFile(cluster.service.driver, cluster.config.clusterName, replica(), "certificate");
      expect(new X509Certificate(file).serialNumber.toUpperCase()).toBe(before);
      await sqlOn(replica(), secrets, "SELECT pg_reload_conf()");
      expect(await servedSerial(replica(), secrets)).toBe(before);
      expect(await sqlOn(replica(), secrets, "SELECT status FROM pg_stat_wal_receiver")).toEqual([{ status: "streaming" }]);
    } finally {
      await faultyDriver.close();
    }
  });

  test("a member's certificate within 30 days of its end is renewed in place and reported (tls:expiring); the CA gets a rotation begun three months before its end", async () => {
    const { secrets } = cluster.service;
    const nodes = [primary(), replica()];
    const before = await Promise.all(nodes.map((node) => servedSerial(node, secrets)));
    const redisBefore = certificateFacts(await servedRedisCertificate(cluster.service.redisEndpoint)).serial;
    const redisClientBefore = certificateFacts(cluster.service.redisEndpoint.tls!.cert!).serial;
    // As if the service had run 355 days since the nodes' certificates (a year each) were issued.
    const future = new Date(Date.now() + (LEAF_VALIDITY_DAYS - 10) * 86_400_000);
    // An instance that did not take the shared check this interval renews its own certificates only.
    await cluster.service.certificates.checkExpiry(future, { shared: false });
    expect(await Promise.all(nodes.map((node) => servedSerial(node, secrets)))).toEqual(before);
    expect(certificateFacts(await servedRedisCertificate(cluster.service.redisEndpoint)).serial).toBe(redisBefore);
    expect(certificateFacts(cluster.service.redisEndpoint.tls!.cert!).serial).not.toBe(redisClientBefore);
    await cluster.service.certificates.checkExpiry(future);
    const after = await Promise.all(nodes.map((node) => servedSerial(node, secrets)));
    expect(after[0]).not.toBe(before[0]);
    expect(after[1]).not.toBe(before[1]);
    // Redis's server certificate and this process's client certificate for it, renewed the same way.
    expect(certificateFacts(await servedRedisCertificate(cluster.service.redisEndpoint)).serial).not.toBe(redisBefore);
    expect(certificateFacts(cluster.service.redisEndpoint.tls!.cert!).serial).not.toBe(redisClientBefore);
    const events = (await cluster.service.events.page({ first: 50, kinds: ["tls:expiring"] })).events as ClusterEvent<"tls:expiring">[];
    const rows = events.map((event) => [event.data.holder, event.data.serial, event.data.action]);
    // The members' and Redis's once each; this process's client certificate by the instance's own check (and again by the
    // shared one: any certificate issued now ends within 30 days of the simulated date).
    expect(rows.filter(([holder]) => holder !== "redis:client").sort()).toEqual([
      ["node:node1", before[0], "renewed"],
      ["node:node2", before[1], "renewed"],
      ["redis:server", redisBefore, "renewed"],
    ]);
    expect(rows).toContainEqual(["redis:client", redisClientBefore, "renewed"]);
    // Three months before the CA's own end, a CA rotation is begun (the old CA stays trusted until the operator finishes).
    const caEnd = cluster.service.authority.authority.notAfter.getTime();
    await cluster.service.certificates.checkExpiry(new Date(caEnd - 60 * 86_400_000));
    const caEvents = (await cluster.service.events.page({ first: 50, kinds: ["tls:expiring"] })).events as ClusterEvent<"tls:expiring">[];
    expect(caEvents.filter((event) => event.data.holder === "ca").map((event) => event.data.action)).toEqual(["rotation-begun"]);
    expect(splitCertificates(await readFile(cluster.service.caFile, "utf8"))).toHaveLength(2);
    trustCa(splitCertificates(await readFile(cluster.service.caFile, "utf8"))[0]!);
    expect((await cluster.service.certificates.finishCaRotation()).ca).toBe("finished");
  });

  // On both drivers: a Docker node's trust files and chain travel through the engine.
  test("CA rotation: old-CA and new-CA clients both pass during the bundle; once finished only the new; replication never broke", async () => {
    const { secrets } = cluster.service;
    const nodes = [primary(), replica()];
    const clients = await tempHome("ca-clients");
    const oldCaFile = path.join(clients, "old-ca.crt");
    const newCaFile = path.join(clients, "new-ca.crt");
    const oldCa = (await readFile(cluster.service.caFile, "utf8")).trim() + "\n";
    await writeFile(oldCaFile, oldCa);
    const receiverBefore = await sqlOn(replica(), secrets, "SELECT pid FROM pg_stat_wal_receiver");
    const startedBefore = await Promise.all(nodes.map((node) => postmasterStart(node, secrets)));
    // A Redis client of the old services CA alone (its trust, and a client certificate it issued), as another process holds one.
    const oldServicesCa = (await readFile(cluster.service.servicesCaFile, "utf8")).trim() + "\n";
    const oldAuthority = await CertificateAuthority.load(cluster.config, { role: "services" });
    const oldClientCertificate = await oldAuthority.issueClientCertificate({ user: "relevo" });
    const oldRedisClient = {
      ...cluster.service.redisEndpoint,
      tls: { ca: oldServicesCa, cert: oldClientCertificate.certificatePem, key: oldClientCertificate.keyPem },
    };
    const redisRunId = async (): Promise<string> => /run_id:(\w+)/.exec(await cluster.service.redis.info("server"))![1]!;
    const redisBefore = await redisRunId();

    const begun = await run("node", [BIN, "certificates", "rotate", "--ca"], { env: cliEnvFor(cluster.config) });
    expect(begun.stdout).toMatch(/redis:server: renewed/);
    expect(begun.stdout).toContain("every member, Redis and the API hold certificates of the new CA");
    const bundle = splitCertificates(await readFile(cluster.service.caFile, "utf8"));
    expect(bundle).toHaveLength(2);
    expect(bundle[1]!.trim()).toBe(oldCa.trim());
    await writeFile(newCaFile, bundle[0]!);
    trustCa(bundle[0]!);
    for (const node of nodes) {
      expect(await libpqLogin(node, secrets, oldCaFile)).toBe("ok");
      expect(await libpqLogin(node, secrets, newCaFile)).toBe("ok");
    }
    // The services CA rotated beside the nodes': its bundle too holds the new and the old one.
    const servicesBundle = splitCertificates(await readFile(cluster.service.servicesCaFile, "utf8"));
    expect(servicesBundle).toHaveLength(2);
    expect(servicesBundle[1]!.trim()).toBe(oldServicesCa.trim());
    // Redis serves the new services CA's certificate (verified by an old-CA client through the cross certificate) and
    // takes both CAs' clients.
    const newServicesSubject = certificateFacts(servicesBundle[0]!).subject;
    expect(certificateFacts(await servedRedisCertificate(oldRedisClient)).issuer).toBe(newServicesSubject);
    expect(certificateFacts(await servedRedisCertificate(cluster.service.redisEndpoint)).issuer).toBe(newServicesSubject);
    const listed = (await run("node", [BIN, "certificates", "list"], { env: cliEnvFor(cluster.config) })).stdout;
    expect(listed.match(/CA rotation under way since/g)).toHaveLength(2);
    expect(listed.match(/CA \((signs|trusted)\)/g)).toEqual(["CA (signs)", "CA (trusted)", "CA (signs)", "CA (trusted)"]);

    const finished = await run("node", [BIN, "certificates", "finish-ca-rotation"], { env: cliEnvFor(cluster.config) });
    expect(finished.stdout).toContain("CA rotation finished");
    expect(splitCertificates(await readFile(cluster.service.caFile, "utf8"))).toEqual([bundle[0]]);
    expect(splitCertificates(await readFile(cluster.service.servicesCaFile, "utf8"))).toEqual([servicesBundle[0]]);
    for (const node of nodes) {
      expect(await libpqLogin(node, secrets, oldCaFile)).toMatch(/certificate verify failed/);
      expect(await libpqLogin(node, secrets, newCaFile)).toBe("ok");
      // Relevo's own clients trust the new CA alone now, without a restart.
      const superuser = {
        user: "postgres",
        password: secrets.superuserPassword,
        database: "postgres",
        trustedCa: cluster.service.trustedCa,
      };
      expect(
        await withNodeClient(node, superuser, 5000, async (client) => (await client.query<{ one: number }>("SELECT 1 AS one")).rows),
      ).toEqual([{ one: 1 }]);
    }
    expect(cluster.service.trustedCa.pem).toBe(bundle[0]);
    // Redis trusts the new services CA alone now: the old CA's client is refused; the service's connections, made again, are
    // admitted (their client certificate was re-issued by the new CA), and Redis never restarted.
    // A client that verifies Redis (it trusts the new services CA) but presents the old CA's certificate: Redis refuses it.
    // Refused for that certificate: Redis's log gains a verification failure.
    const redisLog = path.join(cluster.config.home, "redis", "redis.log");
    const verifyFailures = async (): Promise<number> =>
      ((await readFile(redisLog, "utf8")).match(/certificate verify failed/g) ?? []).length;
    const failuresBefore = await verifyFailures();
    const oldCaClient = await servedRedisCertificate({ ...oldRedisClient, tls: { ...oldRedisClient.tls, ca: servicesBundle[0]! } }).then(
      () => "admitted",
      (error: Error) => `refused: ${error.message}`,
    );
    expect(oldCaClient).toMatch(/^refused: /);
    await eventually(async () => ((await verifyFailures()) > failuresBefore ? true : undefined));
    expect(splitCertificates(await readFile(path.join(cluster.config.home, "redis", "tls", "ca.crt"), "utf8"))).toHaveLength(1);
    await cluster.service.redis.call("CLIENT", "KILL", "TYPE", "normal");
    await eventually(async () => ((await cluster.service.redis.ping().catch(() => null)) === "PONG" ? true : undefined));
    expect(await redisRunId()).toBe(redisBefore);
    // Replication never broke: the same WAL receiver streams, no postmaster restarted, and a new row reaches the replica.
    expect(await sqlOn(replica(), secrets, "SELECT pid FROM pg_stat_wal_receiver")).toEqual(receiverBefore);
    expect(await Promise.all(nodes.map((node) => postmasterStart(node, secrets)))).toEqual(startedBefore);
    await sqlOn(primary(), secrets, "CREATE TABLE ca_rotation_check AS SELECT 'after the CA rotation' AS note");
    await eventually(async () =>
      (await sqlOn(replica(), secrets, "SELECT 1 FROM pg_tables WHERE tablename = 'ca_rotation_check'")).length > 0 ? true : undefined,
    );
    await expect(run("node", [BIN, "certificates", "finish-ca-rotation"], { env: cliEnvFor(cluster.config) })).rejects.toMatchObject({
      stderr: expect.stringContaining("PRECONDITION_FAILED"),
    });
  });

  if (driver === "local")
    test("a CA rotation is not finished while a stopped member holds the old CA's certificate; its start re-issues it", async () => {
      const { secrets } = cluster.service;
      await cluster.service.driver.stop(replica(), { mode: "fast", timeoutMs: 60_000 });
      const begun = await run("node", [BIN, "certificates", "rotate", "--ca"], { env: cliEnvFor(cluster.config) });
      expect(begun.stdout).toMatch(/node:node2: stopped: gets a certificate of the current CA at its next start/);
      expect(begun.stdout).toMatch(/not yet on the new CA: node:node2/);
      trustCa(splitCertificates(await readFile(cluster.service.caFile, "utf8"))[0]!);
      const refused = await run("node", [BIN, "certificates", "finish-ca-rotation"], { env: cliEnvFor(cluster.config) }).then(
        () => "finished",
        (error: Error & { stderr: string }) => error.stderr,
      );
      expect(refused).toMatch(/PRECONDITION_FAILED.*not yet: node:node2/);
      // Still the bundle: nothing was dropped.
      expect(splitCertificates(await readFile(cluster.service.caFile, "utf8"))).toHaveLength(2);
      await cluster.service.driver.start(replica(), { timeoutMs: 60_000 });
      const finished = await run("node", [BIN, "certificates", "finish-ca-rotation"], { env: cliEnvFor(cluster.config) });
      expect(finished.stdout).toMatch(/node:node2: renewed/);
      await eventually(async () => {
        const receiver = await sqlOn<{ status: string }>(replica(), secrets, "SELECT status FROM pg_stat_wal_receiver").catch(() => []);
        return receiver[0]?.status === "streaming" ? true : undefined;
      });
    });

  if (driver === "local")
    test("a CA rotation gives Redis the services bundle before any member is renewed: a new-CA client is admitted meanwhile", async () => {
      const { service, config } = cluster;
      const driverWithHook = service.driver as { renewTls: typeof service.driver.renewTls };
      const realRenew = driverWithHook.renewTls.bind(service.driver);
      let whileMembersRenew: string | null = null;
      // Before the first member's renewal, another instance's Redis client certificate of the new services CA connects.
      driverWithHook.renewTls = async (node: NodeRef) => {
        if (whileMembersRenew === null) {
          const services = await CertificateAuthority.load(config, { role: "services" });
          const client = await OwnRedisClientCertificate.issue(services);
          whileMembersRenew = await servedRedisCertificate({ ...service.redisEndpoint, tls: client }).then(
            () => "admitted",
            (error: Error) => `refused: ${error.message}`,
          );
        }
        return realRenew(node);
      };
      try {
        const begun = await service.certificates.rotate({ ca: true });
        expect(whileMembersRenew).toBe("admitted");
        expect(begun.outcomes.map((outcome) => outcome.phase)).not.toContain("failed");
      } finally {
        delete (driverWithHook as Partial<typeof driverWithHook>).renewTls;
      }
      trustCa(splitCertificates(await readFile(service.caFile, "utf8"))[0]!);
      expect((await service.certificates.finishCaRotation()).ca).toBe("finished");
    });

  if (driver === "local")
    test("a renewal that fails before its files are in place: the member stays awaited, finish refuses, the bundle and the member's trust stay; one failing after the finish is reported", async () => {
      const { config, service } = cluster;
      // The service's own CA and driver, as its rotation has them.
      const live = service.authority;
      const real = service.driver;
      // The service's driver, except that node2's renewal fails after its certificate was issued (a write that fails).
      let failNode2 = (): boolean => true;
      const failing = new Proxy(real, {
        get(target, property, receiver) {
          if (property === "renewTls") {
            return async (node: NodeRef) => {
              if (node.name !== replica().name || !failNode2()) return target.renewTls(node);
              await nodeTlsSource(live, { recordIn: config.home }).serverCertificate(node);
              throw new Error("the files could not be written");
            };
          }
          const value = Reflect.get(target, property, receiver) as unknown;
          return typeof value === "function" ? (value as (...args: unknown[]) => unknown).bind(target) : value;
        },
      });
      const superuser = { user: "postgres", password: service.secrets.superuserPassword, database: "postgres", trustedCa: live.trust };
      const rotation = new CertificateRotation({
        config,
        ca: live,
        servicesCa: service.servicesAuthority,
        driver: failing,
        nodes: service.nodes,
        superuser,
        events: service.events,
        logger: createLogger({ level: "silent" }),
      });
      const begun = await rotation.rotate({ ca: true });
      expect(begun.outcomes.find((outcome) => outcome.holder === "node:node2")).toMatchObject({ phase: "failed" });
      expect(begun.awaiting).toEqual(["node:node2"]);
      // The member's trust got the bundle first, whatever its certificate's fate: it verifies servers of either CA.
      expect(splitCertificates(await nodeTlsFile(real, config.clusterName, replica(), "ca"))).toHaveLength(2);
      await expect(rotation.finishCaRotation()).rejects.toMatchObject({
        code: "PRECONDITION_FAILED",
        message: expect.stringContaining("node:node2"),
      });
      expect(splitCertificates(await readFile(service.caFile, "utf8"))).toHaveLength(2);
      trustCa(splitCertificates(await readFile(service.caFile, "utf8"))[0]!);
      expect(
        await withNodeClient(replica(), superuser, 5000, async (client) => (await client.query<{ one: number }>("SELECT 1 AS one")).rows),
      ).toEqual([{ one: 1 }]);
      // With the files written, the finish's first pass renews node2; its second (once the old CA left the CA's file)
      // fails: finished, but the report names node2 as maybe still trusting the old CA, as its trust file shows.
      let node2Renewals = 0;
      failNode2 = () => ++node2Renewals > 1;
      const finished = await rotation.finishCaRotation();
      expect(finished.ca).toBe("finished");
      expect(node2Renewals).toBe(2);
      expect(finished.oldCaTrustedBy).toEqual(["node:node2"]);
      expect(finished.outcomes.find((outcome) => outcome.holder === "node:node1")).toMatchObject({ phase: "renewed" });
      expect(splitCertificates(await nodeTlsFile(real, config.clusterName, replica(), "ca"))).toHaveLength(2);
      // A later rotation narrows node2's trust to the new CA.
      failNode2 = () => false;
      const rotated = await run("node", [BIN, "certificates", "rotate"], { env: cliEnvFor(config) });
      expect(rotated.stdout).toMatch(/node:node2: renewed/);
      expect(splitCertificates(await nodeTlsFile(real, config.clusterName, replica(), "ca"))).toHaveLength(1);
    });

  if (driver === "local")
    test("a member's renewal and its start each wait while another process holds that member's certificate lock", async () => {
      const { config, service } = cluster;
      const { secrets } = service;
      const node = replica();
      const holder = `node:${node.name}`;
      const lockFile = path.join(config.home, "certificates", "node-node2.lock");
      const before = await servedSerial(node, secrets);
      // Another instance renewing node2 (or starting it): this instance's rotation renews node1, then waits for node2.
      const { rotation } = await withHolderLock(config.home, holder, { purpose: "another instance", waitMs: 1000 }, async () => {
        let settled = false;
        const pending = service.certificates.rotate({ ca: false }).finally(() => (settled = true));
        await new Promise((resolve) => setTimeout(resolve, 2000));
        expect(settled).toBe(false);
        expect(await servedSerial(node, secrets)).toBe(before);
        expect(JSON.parse(await readFile(lockFile, "utf8"))).toMatchObject({ purpose: "another instance" });
        return { rotation: pending };
      });
      const report = await rotation;
      expect(report.outcomes.find((outcome) => outcome.holder === holder)).toMatchObject({ phase: "renewed" });
      expect(await servedSerial(node, secrets)).not.toBe(before);
      // A start waits the same way: its files are not written while another process renews the node.
      await service.driver.stop(node, { mode: "fast", timeoutMs: 30_000 });
      const { start } = await withHolderLock(config.home, holder, { purpose: "another instance", waitMs: 1000 }, async () => {
        const pending = service.driver.start(node, { timeoutMs: 60_000 });
        await new Promise((resolve) => setTimeout(resolve, 2000));
        expect((await service.driver.state(node)).phase).toBe("stopped");
        return { start: pending };
      });
      await start;
      expect((await service.driver.state(node)).phase).toBe("running");
      await eventually(async () => {
        const receiver = await sqlOn<{ status: string }>(node, secrets, "SELECT status FROM pg_stat_wal_receiver").catch(() => []);
        return receiver[0]?.status === "streaming" ? true : undefined;
      });
    });

  // Last: it takes the cluster apart (node2 is left fenced). The decision is the driver's neither way: one driver is enough
  // (registered on the local driver only, not skipped on the other).
  if (driver === "local")
    test("a fenced node started by hand (writable, read-only) does not get the recorded primary fenced in its place", async () => {
      const { driver } = cluster.service;
      await cluster.service.failover.stop();
      // Fenced, then started by hand as a primary: promoted here, read-only and marked as a fence leaves it.
      await sqlOn(replica(), cluster.service.secrets, "SELECT pg_promote()");
      await sqlOn(replica(), cluster.service.secrets, "ALTER SYSTEM SET default_transaction_read_only = on");
      await sqlOn(replica(), cluster.service.secrets, "SELECT pg_reload_conf()");
      await driver.writeFile(replica(), FENCE_MARKER, JSON.stringify({ fencedAt: new Date().toISOString(), reason: "test" }));
      expect(
        await sqlOn(replica(), cluster.service.secrets, "SELECT pg_is_in_recovery() AS r, current_setting('transaction_read_only') AS ro"),
      ).toEqual([{ r: false, ro: "on" }]);
      await driver.stop(primary(), { mode: "fast", timeoutMs: 60_000 });
      const outcomes = await bootstrapCluster(
        {
          config: cluster.config,
          driver,
          secrets: cluster.service.secrets,
          trustedCa: cluster.service.trustedCa,
          logger: createLogger({ level: "silent" }),
          recordedPrimary: primary().name,
          fenced: new Set(),
        },
        cluster.service.nodes,
      );
      expect(outcomes.map((o) => `${o.node.name}:${o.phase}`)).toEqual(["node1:started", "node2:fenced"]);
      expect((await driver.state(replica())).phase).toBe("stopped");
      expect(await sqlOn(primary(), cluster.service.secrets, "SELECT pg_is_in_recovery() AS r")).toEqual([{ r: false }]);
    });
});
