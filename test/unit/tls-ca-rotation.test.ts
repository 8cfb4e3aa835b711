import { expect } from "@jest/globals";
import { execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { loadConfig } from "../../src/config/config";
import { ErrorCode } from "../../src/errors";
import { beginCaRotation, finishCaRotation } from "../../src/tls/ca-rotation";
import { CertificateAuthority } from "../../src/tls/certificate-authority";
import { createCa } from "../../src/tls/certificate-issuer";
import { LiveAuthority } from "../../src/tls/live-authority";
import {
  certificateFacts,
  expiresSoon,
  issuedBy,
  nodeHolder,
  readIssued,
  recordIssued,
  EXPIRY_WARNING_DAYS,
} from "../../src/tls/issued-certificates";
import { ownCaPaths, readCaRotation, writeCaRotation } from "../../src/tls/own-ca-files";
import { joinCertificates, splitCertificates } from "../../src/tls/pem-bundle";
import { handshake } from "../helpers/tls-handshake";
import { CertificateRotation } from "../../src/cluster/certificate-rotation";
import type { EventLog } from "../../src/events/event-log";
import { createLogger } from "../../src/log";
import type { NodeDriver } from "../../src/nodes/node-driver";

const DAY_MS = 86_400_000;

describe("CA rotation of Relevo's own CA", () => {
  let home: string;
  beforeEach(async () => {
    home = await mkdtemp(path.join(os.tmpdir(), "relevo-ca-rotation-"));
  });
  afterEach(async () => {
    await rm(home, { recursive: true, force: true });
  });
  const settings = (extra: Record<string, string> = {}) => loadConfig({ RELEVO_HOME: home, ...extra });
  const serve = (ca: CertificateAuthority) => ca.issueServerCertificate({ commonName: "node1", addresses: ["127.0.0.1"] });

  test("the bundle phase: clients holding the old CA only, the new CA only, or the bundle all verify a new leaf", async () => {
    const old = await CertificateAuthority.load(settings());
    const state = await beginCaRotation(settings());
    const current = await CertificateAuthority.load(settings());
    // The trust file: the new CA (it signs), then the old one.
    const bundle = splitCertificates(current.certificatePem);
    expect(bundle).toHaveLength(2);
    expect(bundle[1]).toBe(old.signerPem);
    expect(current.signerPem).toBe(bundle[0]);
    expect(state.nodes?.previousCaPem).toBe(old.signerPem);
    expect((await readCaRotation(home, "nodes"))?.phase).toBe("bundle");
    expect((await stat(ownCaPaths(home, "nodes").key)).mode & 0o777).toBe(0o600);

    const leaf = await serve(current);
    // The leaf, then the new CA certified by the old one.
    const chain = splitCertificates(leaf.certificatePem);
    expect(chain).toHaveLength(2);
    expect(issuedBy(chain[0]!, current.signerPem)).toBe(true);
    expect(issuedBy(chain[1]!, old.signerPem)).toBe(true);
    expect(new X509Certificate(chain[1]!).subject).toBe(new X509Certificate(current.signerPem).subject);

    expect(await handshake(leaf, old.signerPem, "127.0.0.1")).toBe("verified");
    expect(await handshake(leaf, current.signerPem, "127.0.0.1")).toBe("verified");
    expect(await handshake(leaf, current.certificatePem, "127.0.0.1")).toBe("verified");
    // A leaf of the old CA, still served by a node not yet renewed, verifies against the bundle.
    expect(await handshake(await serve(old), current.certificatePem, "127.0.0.1")).toBe("verified");

    await expect(beginCaRotation(settings())).rejects.toMatchObject({ code: ErrorCode.PreconditionFailed });
  });

  test("a rotation begun under a clock stepped forward leaves CAs valid once the clock is set right", async () => {
    const old = await CertificateAuthority.load(settings());
    const stepped = new Date(Date.now() + 400 * DAY_MS);
    await beginCaRotation(settings(), { now: stepped });
    const current = await CertificateAuthority.load(settings());
    // The new CA starts when its predecessor did; its cross certificate too.
    expect(certificateFacts(current.signerPem).notBefore).toBe(certificateFacts(old.signerPem).notBefore);
    const cross = (await readCaRotation(home, "nodes"))!.crossCertificatePem!;
    expect(certificateFacts(cross).notBefore).toBe(certificateFacts(old.signerPem).notBefore);
    // A leaf issued now (the clock set right) verifies for clients of either CA.
    const leaf = await serve(current);
    expect(await handshake(leaf, current.signerPem, "127.0.0.1")).toBe("verified");
    expect(await handshake(leaf, old.signerPem, "127.0.0.1")).toBe("verified");
  });

  test("finished: the old CA leaves the trust file and the chain, and a client holding it alone fails", async () => {
    const old = await CertificateAuthority.load(settings());
    await beginCaRotation(settings());
    await finishCaRotation(settings());
    const current = await CertificateAuthority.load(settings());
    expect(splitCertificates(current.certificatePem)).toEqual([current.signerPem]);
    expect(current.signerPem).not.toBe(old.signerPem);
    expect(await readCaRotation(home, "nodes")).toBeNull();
    const leaf = await serve(current);
    expect(splitCertificates(leaf.certificatePem)).toHaveLength(1);
    expect(await handshake(leaf, current.certificatePem, "127.0.0.1")).toBe("verified");
    expect(await handshake(leaf, old.signerPem, "127.0.0.1")).toMatch(
      /unable to (verify the first certificate|get local issuer certificate)/,
    );
    await expect(finishCaRotation(settings())).rejects.toMatchObject({ code: ErrorCode.PreconditionFailed });
  });

  test("both CAs rotate together: the services CA gets its own bundle and cross certificate, and finishes with the nodes'", async () => {
    const oldServices = await CertificateAuthority.load(settings(), { role: "services" });
    const state = await beginCaRotation(settings());
    expect(state.services?.previousCaPem).toBe(oldServices.signerPem);
    expect(await readCaRotation(home, "services")).not.toBeNull();
    const services = await CertificateAuthority.load(settings(), { role: "services" });
    const nodes = await CertificateAuthority.load(settings());
    expect(splitCertificates(services.certificatePem)).toEqual([services.signerPem, oldServices.signerPem]);
    expect(services.signerPem).not.toBe(nodes.signerPem);
    const api = await services.issueServerCertificate({ commonName: "api", addresses: ["127.0.0.1"] });
    // The API's new certificate still verifies for a client holding the old services CA alone, never for the nodes' CAs.
    expect(await handshake(api, oldServices.signerPem, "127.0.0.1")).toBe("verified");
    expect(await handshake(api, nodes.certificatePem, "127.0.0.1")).not.toBe("verified");
    expect((await stat(ownCaPaths(home, "services").key)).mode & 0o777).toBe(0o600);
    await finishCaRotation(settings());
    expect(await readCaRotation(home, "services")).toBeNull();
    expect(splitCertificates((await CertificateAuthority.load(settings(), { role: "services" })).certificatePem)).toEqual([
      services.signerPem,
    ]);
  });

  test("a rotation of one CA only (a crash between the two begins) is refused a new begin and finished alone", async () => {
    await beginCaRotation(settings());
    await finishCaRotation(settings());
    // As if the services CA's begin had not run: only the nodes' rotation is recorded.
    const nodesOnly = await readFile(ownCaPaths(home, "nodes").certificate, "utf8");
    await writeCaRotation(
      home,
      { phase: "bundle", startedAt: new Date().toISOString(), previousCaPem: nodesOnly, crossCertificatePem: null },
      "nodes",
    );
    await expect(beginCaRotation(settings())).rejects.toMatchObject({ code: ErrorCode.PreconditionFailed });
    const servicesBefore = await readFile(ownCaPaths(home, "services").certificate, "utf8");
    await finishCaRotation(settings());
    expect(await readCaRotation(home, "nodes")).toBeNull();
    expect(await readFile(ownCaPaths(home, "services").certificate, "utf8")).toBe(servicesBefore);
  });

  test("an instance's own certificates follow a finish, judged by the services CA's file (the record may still be there)", async () => {
    await CertificateAuthority.load(settings());
    const nodes = new LiveAuthority(await CertificateAuthority.load(settings()), settings());
    const services = new LiveAuthority(await CertificateAuthority.load(settings(), { role: "services" }), settings());
    const rotation = new CertificateRotation({
      config: settings(),
      ca: nodes,
      servicesCa: services,
      // Neither is used by followCaChange: no member, no event.
      driver: undefined as unknown as NodeDriver,
      nodes: [],
      superuser: { user: "postgres", password: "-", database: "postgres", trustedCa: nodes.trust },
      events: undefined as unknown as EventLog,
      logger: createLogger({ level: "silent" }),
    });
    let renewals = 0;
    rotation.include(
      {
        holder: "api:1",
        renew: () => Promise.resolve({ phase: "renewed", holder: "api:1", serial: String(++renewals), previousSerial: null }),
      },
      { rotate: false, followCa: true },
    );
    await beginCaRotation(settings());
    await services.reload();
    expect(await rotation.followCaChange()).toEqual([]);
    // A finish's first step: the services CA's file holds the new CA alone; its rotation record is not removed yet.
    const paths = ownCaPaths(home, "services");
    await writeFile(paths.certificate, splitCertificates(await readFile(paths.certificate, "utf8"))[0]!);
    expect(await readCaRotation(home, "services")).not.toBeNull();
    await services.reload();
    expect((await rotation.followCaChange()).map((outcome) => outcome.phase)).toEqual(["renewed"]);
    expect(renewals).toBe(1);
  });

  test("a running service's trust follows a rotation another instance made (reloadIfChanged)", async () => {
    const live = new LiveAuthority(await CertificateAuthority.load(settings()), settings());
    const trust = live.trust;
    const before = trust.pem;
    expect(await live.reloadIfChanged()).toBe(false);
    await beginCaRotation(settings());
    expect(await live.reloadIfChanged()).toBe(true);
    expect(trust.pem).not.toBe(before);
    expect(splitCertificates(trust.pem)).toHaveLength(2);
    expect(live.authority.chainPem).not.toBe("");
    await finishCaRotation(settings());
    expect(await live.reloadIfChanged()).toBe(true);
    expect(splitCertificates(trust.pem)).toEqual([live.authority.signerPem]);
    expect(live.authority.chainPem).toBe("");
  });

  test("a crash between the rotation's record and its renames is completed at the next load; one before the record is undone", async () => {
    const old = await CertificateAuthority.load(settings());
    const paths = ownCaPaths(home, "nodes");
    const next = await createCa({ commonName: "Relevo CA next", now: new Date() });
    await writeFile(paths.nextKey, next.keyPem, { mode: 0o600 });
    await writeFile(paths.nextCertificate, joinCertificates([next.certificatePem, old.certificatePem]));
    // No record: the rotation never began.
    expect((await CertificateAuthority.load(settings())).signerPem).toBe(old.signerPem);
    await expect(stat(paths.nextKey)).rejects.toMatchObject({ code: "ENOENT" });

    await writeFile(paths.nextKey, next.keyPem, { mode: 0o600 });
    await writeFile(paths.nextCertificate, joinCertificates([next.certificatePem, old.certificatePem]));
    await writeCaRotation(
      home,
      {
        phase: "bundle",
        startedAt: new Date().toISOString(),
        previousCaPem: old.signerPem,
        crossCertificatePem: null,
      },
      "nodes",
    );
    const loaded = await CertificateAuthority.load(settings());
    expect(loaded.signerPem).toBe(splitCertificates(next.certificatePem)[0]);
    expect(splitCertificates(loaded.certificatePem)).toHaveLength(2);
  });

  test("two begins and two loads at once: one rotation begins, the other begin is refused, and the signing CA is the one certified", async () => {
    const old = await CertificateAuthority.load(settings());
    const attempts = await Promise.allSettled([
      beginCaRotation(settings()),
      CertificateAuthority.load(settings()),
      beginCaRotation(settings()),
      CertificateAuthority.load(settings()),
    ]);
    const begins = [attempts[0], attempts[2]];
    expect(begins.filter((attempt) => attempt.status === "fulfilled")).toHaveLength(1);
    expect(begins.find((attempt) => attempt.status === "rejected")).toMatchObject({ reason: { code: ErrorCode.PreconditionFailed } });
    expect([attempts[1].status, attempts[3].status]).toEqual(["fulfilled", "fulfilled"]);
    const loaded = await CertificateAuthority.load(settings());
    const state = (await readCaRotation(home, "nodes"))!;
    expect(splitCertificates(loaded.certificatePem)).toEqual([loaded.signerPem, old.signerPem]);
    // The cross certificate the servers send is for the key that signs now: clients of the old CA verify the new leaves.
    const cross = new X509Certificate(state.crossCertificatePem!);
    expect(cross.publicKey.equals(new X509Certificate(loaded.signerPem).publicKey)).toBe(true);
  });

  test("a configured CA is not Relevo's to rotate (the services CA beside it is); its file may hold the new CA first and the old one after it", async () => {
    const make = (name: string) => {
      const key = path.join(home, `${name}.key`);
      const certificate = path.join(home, `${name}.crt`);
      execFileSync("openssl", [
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
        "-subj", `/CN=${name}`, "-keyout", key, "-out", certificate,
      ], { stdio: "ignore" }); // prettier-ignore
      return { key, certificate };
    };
    const oldCa = make("old-ca");
    const newCa = make("new-ca");
    const bundle = path.join(home, "bundle.crt");
    await writeFile(bundle, (await readFile(newCa.certificate, "utf8")) + (await readFile(oldCa.certificate, "utf8")));
    const configured = settings({ RELEVO_TLS_CA_FILE: bundle, RELEVO_TLS_CA_KEY_FILE: newCa.key });
    // `--ca` beside it rotates the services CA (Relevo's own) and leaves the operator's file as it is.
    const servicesBefore = await CertificateAuthority.load(configured, { role: "services" });
    const begun = await beginCaRotation(configured);
    expect(Object.keys(begun)).toEqual(["services"]);
    expect(await readFile(bundle, "utf8")).toBe((await readFile(newCa.certificate, "utf8")) + (await readFile(oldCa.certificate, "utf8")));
    expect(splitCertificates((await CertificateAuthority.load(configured, { role: "services" })).certificatePem)[1]).toBe(
      servicesBefore.signerPem,
    );
    await finishCaRotation(configured);
    expect(await readCaRotation(home, "services")).toBeNull();
    const ca = await CertificateAuthority.load(configured);
    expect(certificateFacts(ca.signerPem).subject).toBe("CN=new-ca");
    const leaf = await serve(ca);
    expect(splitCertificates(leaf.certificatePem)).toHaveLength(1);
    expect(await handshake(leaf, ca.certificatePem, "127.0.0.1")).toBe("verified");
    // Expiring within EXPIRY_WARNING_DAYS: the CA's end is reported.
    expect(expiresSoon(ca.notAfter, new Date())).toBe(true);
  });

  test("a CA that may not vouch for another (pathlen 0) gives no cross certificate", async () => {
    const key = path.join(home, "p0.key");
    const certificate = path.join(home, "p0.crt");
    execFileSync("openssl", [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30", "-subj", "/CN=p0",
      "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0", "-keyout", key, "-out", certificate,
    ], { stdio: "ignore" }); // prettier-ignore
    const ca = await CertificateAuthority.load(settings({ RELEVO_TLS_CA_FILE: certificate, RELEVO_TLS_CA_KEY_FILE: key }));
    const next = await createCa({ commonName: "next", now: new Date() });
    expect(await ca.crossCertify(next.certificatePem)).toBeNull();
  });
});

describe("the record of issued certificates", () => {
  let home: string;
  beforeEach(async () => {
    home = await mkdtemp(path.join(os.tmpdir(), "relevo-issued-"));
  });
  afterEach(async () => {
    await rm(home, { recursive: true, force: true });
  });

  test("keeps each holder's last certificate's facts, no key, 0600", async () => {
    const ca = await CertificateAuthority.load(loadConfig({ RELEVO_HOME: home }));
    const first = await ca.issueServerCertificate({ commonName: "node1", addresses: ["127.0.0.1"] });
    const second = await ca.issueServerCertificate({ commonName: "node1", addresses: ["127.0.0.1"] });
    await recordIssued(home, nodeHolder("node1"), first.certificatePem);
    await recordIssued(home, nodeHolder("node1"), second.certificatePem);
    const [record, ...others] = await readIssued(home);
    expect(others).toEqual([]);
    expect(record).toMatchObject({
      holder: "node:node1",
      subject: "CN=node1",
      subjectAltNames: ["IP Address:127.0.0.1"],
      serial: new X509Certificate(second.certificatePem).serialNumber.toUpperCase(),
      issuer: certificateFacts(ca.signerPem).subject,
    });
    const file = path.join(home, "certificates", "node-node1.json");
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(await readFile(file, "utf8")).not.toContain("PRIVATE KEY");
  });

  test("expires soon: within the warning window or past", () => {
    const now = new Date("2026-06-01T00:00:00Z");
    expect(expiresSoon(new Date(now.getTime() + (EXPIRY_WARNING_DAYS + 1) * DAY_MS), now)).toBe(false);
    expect(expiresSoon(new Date(now.getTime() + (EXPIRY_WARNING_DAYS - 1) * DAY_MS), now)).toBe(true);
    expect(expiresSoon(new Date(now.getTime() - DAY_MS), now)).toBe(true);
  });
});
