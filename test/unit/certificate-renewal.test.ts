import { expect } from "@jest/globals";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { loadConfig } from "../../src/config/config";
import { CertificateAuthority } from "../../src/tls/certificate-authority";
import { RENEW_BEFORE_DAYS, renewalReason } from "../../src/tls/certificate-renewal";

const DAY_MS = 86_400_000;

describe("whether a kept server certificate is issued again (pure)", () => {
  let homes: string[] = [];
  const ca = async (clock?: () => Date): Promise<CertificateAuthority> => {
    const home = await mkdtemp(path.join(os.tmpdir(), "renewal-"));
    homes.push(home);
    return CertificateAuthority.load(loadConfig({}, { home }), clock ? { clock } : {});
  };
  afterAll(async () => {
    for (const home of homes) await rm(home, { recursive: true, force: true });
    homes = [];
  });

  test("a fresh certificate of the CA for the addresses is kept; a missing file, a torn pair, another address or CA are not", async () => {
    const authority = await ca();
    const issued = await authority.issueServerCertificate({ commonName: "redis", addresses: ["127.0.0.1", "redis.example.org"] });
    const kept = { certificatePem: issued.certificatePem, keyPem: issued.keyPem };
    const options = { caPem: authority.certificatePem, addresses: ["127.0.0.1", "redis.example.org"], now: new Date() };
    expect(renewalReason(kept, options)).toBeNull();
    expect(renewalReason({ ...kept, keyPem: null }, options)).toBe("missing");
    expect(renewalReason({ ...kept, certificatePem: null }, options)).toBe("missing");
    const other = await authority.issueServerCertificate({ commonName: "redis", addresses: ["127.0.0.1"] });
    expect(renewalReason({ ...kept, keyPem: other.keyPem }, options)).toBe("unreadable");
    expect(renewalReason({ ...kept, certificatePem: "not a certificate" }, options)).toBe("unreadable");
    expect(renewalReason(kept, { ...options, addresses: ["10.0.0.5"] })).toBe("addresses-changed");
    expect(renewalReason(kept, { ...options, addresses: ["127.0.0.1", "other.example.org"] })).toBe("addresses-changed");
    expect(renewalReason(kept, { ...options, caPem: (await ca()).certificatePem })).toBe("other-ca");
  });

  test(`within ${RENEW_BEFORE_DAYS} days of its end, or past it, it is issued again`, async () => {
    const issuedAt = new Date();
    const authority = await ca(() => issuedAt);
    const issued = await authority.issueServerCertificate({ commonName: "redis", addresses: ["127.0.0.1"] });
    const kept = { certificatePem: issued.certificatePem, keyPem: issued.keyPem };
    const at = (now: Date) => renewalReason(kept, { caPem: authority.certificatePem, addresses: ["127.0.0.1"], now });
    const end = issued.notAfter.getTime();
    expect(at(new Date(end - (RENEW_BEFORE_DAYS + 1) * DAY_MS))).toBeNull();
    expect(at(new Date(end - (RENEW_BEFORE_DAYS - 1) * DAY_MS))).toBe("expiring");
    expect(at(new Date(end + DAY_MS))).toBe("expiring");
  });
});
