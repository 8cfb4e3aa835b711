import { createHmac } from "node:crypto";
import { appendFile, chown, mkdir, mkdtemp, readFile, rm, rmdir, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { expect } from "@jest/globals";
import { parse, type OperationDefinitionNode } from "graphql";
import { mutationAudit } from "../../src/api/audit";
import { bannerToken } from "../../src/cli/commands";
import { tokenState } from "../../src/cli/token-commands";
import { formatDuration, parseDuration } from "../../src/config/duration";
import { createLogger } from "../../src/log";
import { loadOrCreateSecrets, readSecrets, rotateTokenKey, secretsFile } from "../../src/secrets/secrets-store";
import { TokenAccess } from "../../src/secrets/token-access";
import { issueToken, readTokenFacts, revokedIds, revokeToken, tokenRecords, tokenRegistryFile } from "../../src/secrets/token-registry";
import { mintToken, readToken, roleAllows, tokenRefusal } from "../../src/secrets/tokens";

const KEY = "unit-test-key-0123456789abcdefghijklmnop";
const HOUR = 3_600_000;

describe("API tokens", () => {
  test("a minted token reads back as its role, a short id and its expiry, which is signed", () => {
    const now = Date.parse("2026-12-01T00:00:00Z");
    const { token, identity } = mintToken(KEY, "viewer", { ttlMs: 2 * HOUR, now });
    expect(identity).toEqual({ role: "viewer", id: expect.stringMatching(/^[0-9a-f]{12}$/), expiresAt: now + 2 * HOUR });
    expect(readToken(KEY, token)).toEqual({ phase: "signed", identity });
    expect(token).toContain(identity.id);
    // Moving the expiry by a second breaks the signature.
    const later = token.replace(`.${(now + 2 * HOUR) / 1000}.`, `.${(now + 2 * HOUR) / 1000 + 1}.`);
    expect(later).not.toBe(token);
    expect(readToken(KEY, later)).toEqual({ phase: "invalid" });
  });

  test("another key, a changed role or a changed signature do not verify", () => {
    const { token } = mintToken(KEY, "viewer");
    expect(readToken(`${KEY}x`, token).phase).toBe("invalid");
    expect(readToken(KEY, token.replace(".viewer.", ".operator.")).phase).toBe("invalid");
    expect(readToken(KEY, `${token.slice(0, -1)}${token.endsWith("A") ? "B" : "A"}`).phase).toBe("invalid");
    expect(readToken(KEY, "").phase).toBe("invalid");
  });

  test("a token of the format before expiry is recognised (good signature) but not accepted as signed", () => {
    const body = "rlv.operator.0123456789ab";
    const legacy = `${body}.${createHmac("sha256", KEY).update(body).digest("base64url")}`;
    expect(readToken(KEY, legacy)).toEqual({ phase: "legacy" });
    expect(readToken(`${KEY}x`, legacy)).toEqual({ phase: "invalid" });
  });

  test("refusal: expired at its expiry, revoked when its id is listed, else accepted", () => {
    const identity = mintToken(KEY, "viewer", { ttlMs: HOUR, now: 0 }).identity;
    expect(tokenRefusal(identity, { now: HOUR - 1, revoked: new Set() })).toBeNull();
    expect(tokenRefusal(identity, { now: HOUR, revoked: new Set() })).toBe("expired");
    expect(tokenRefusal(identity, { now: 1, revoked: new Set([identity.id]) })).toBe("revoked");
  });

  test("durations: whole numbers of s, m, h, d; anything else is not one", () => {
    expect(parseDuration("90s")).toBe(90_000);
    expect(parseDuration("15m")).toBe(900_000);
    expect(parseDuration("30d")).toBe(30 * 24 * HOUR);
    for (const bad of ["", "0s", "1.5h", "10", "-1d", "1w", "1d2h"]) expect(parseDuration(bad)).toBeNull();
    expect(formatDuration(366 * 24 * HOUR)).toBe("366d");
  });

  test("operator includes viewer, not the other way round", () => {
    expect(roleAllows("operator", "viewer")).toBe(true);
    expect(roleAllows("operator", "operator")).toBe(true);
    expect(roleAllows("viewer", "operator")).toBe(false);
  });

  test("relevo up's banner shows the operator token to a terminal only (anything else may be a log)", () => {
    const { token } = mintToken(KEY, "operator");
    const written: string[] = [];
    expect(bannerToken(token, { out: (text) => written.push(text), terminal: true })).toBe(token);
    const piped = bannerToken(token, { out: (text) => written.push(text), terminal: false });
    expect(piped).not.toContain(token);
    expect(piped).toContain("relevo token");
  });
});

describe("the token registry and TokenAccess, on a real data home", () => {
  const logger = createLogger({ level: "silent" });

  test("minted tokens are listed by id without the token; revocation and key rotation are refused within one look", async () => {
    const home = await mkdtemp(path.join(os.tmpdir(), "relevo-tokens-"));
    const { tokenKey } = await loadOrCreateSecrets(home);
    const viewer = await issueToken(home, tokenKey, { role: "viewer", ttlMs: HOUR, label: "test" });
    const operator = await issueToken(home, tokenKey, { role: "operator", ttlMs: HOUR, label: "test" });
    const expired = mintToken(tokenKey, "viewer", { ttlMs: 1000, now: Date.now() - 60_000 });
    const access = await TokenAccess.open({ home, logger, pollMs: 60_000 });
    try {
      expect(access.check(viewer.token)).toEqual({ phase: "accepted", identity: viewer.identity });
      const refusedExpired = access.check(expired.token);
      expect(refusedExpired.phase === "refused" && refusedExpired.error.code).toBe("TOKEN_EXPIRED");

      await revokeToken(home, viewer.identity.id);
      await access.refresh();
      const refusedRevoked = access.check(viewer.token);
      expect(refusedRevoked.phase === "refused" && refusedRevoked.error.code).toBe("TOKEN_REVOKED");
      expect(access.check(operator.token).phase).toBe("accepted");
      await expect(revokeToken(home, "0123456789ab")).rejects.toMatchObject({ code: "NOT_FOUND" });
      await expect(revokeToken(home, "../x")).rejects.toMatchObject({ code: "BAD_USER_INPUT" });

      const records = tokenRecords(await readTokenFacts(home));
      expect(records.map((record) => [record.id, record.role, tokenState(record, Date.now())])).toEqual([
        [viewer.identity.id, "viewer", "revoked"],
        [operator.identity.id, "operator", "valid"],
      ]);
      const registry = JSON.stringify(await readTokenFacts(home));
      for (const { token } of [viewer, operator]) expect(registry).not.toContain(token.split(".").pop());

      const generation = access.keyGeneration;
      await rotateTokenKey(home);
      await access.refresh();
      expect(access.keyGeneration).toBe(generation + 1);
      const rotated = access.check(operator.token);
      expect(rotated.phase === "refused" && rotated.error.code).toBe("UNAUTHENTICATED");
      const fresh = mintToken((await readSecrets(home)).tokenKey, "operator");
      expect(access.check(fresh.token).phase).toBe("accepted");
    } finally {
      access.close();
    }
  });
});

describe("the token registry after a torn last line", () => {
  test("a revocation appended after a torn line is still read", async () => {
    const home = await mkdtemp(path.join(os.tmpdir(), "relevo-tokens-torn-"));
    const { tokenKey } = await loadOrCreateSecrets(home);
    const viewer = await issueToken(home, tokenKey, { role: "viewer", ttlMs: HOUR, label: "torn" });
    await appendFile(tokenRegistryFile(home), '{"op":"mi'); // a crash mid-line
    await revokeToken(home, viewer.identity.id);
    expect(revokedIds(await readTokenFacts(home))).toEqual(new Set([viewer.identity.id]));
    const later = await issueToken(home, tokenKey, { role: "operator", ttlMs: HOUR, label: "after" });
    expect(tokenRecords(await readTokenFacts(home)).map((record) => record.id)).toEqual([viewer.identity.id, later.identity.id]);
  });
});

describe("revoking a token the registry never recorded", () => {
  test("refused without --force (a typo is not a revocation); with it, recorded and the token refused", async () => {
    const home = await mkdtemp(path.join(os.tmpdir(), "relevo-tokens-force-"));
    const { tokenKey } = await loadOrCreateSecrets(home);
    const unrecorded = mintToken(tokenKey, "operator", { ttlMs: 15 * 60_000 }); // as the CLI mints for each command
    await expect(revokeToken(home, unrecorded.identity.id)).rejects.toMatchObject({
      code: "NOT_FOUND",
      message: expect.stringContaining("--force"),
    });
    expect(await readTokenFacts(home)).toEqual([]);
    expect(await revokeToken(home, unrecorded.identity.id, { force: true })).toEqual({ record: null, alreadyRevoked: false });
    expect(await revokeToken(home, unrecorded.identity.id, { force: true })).toEqual({ record: null, alreadyRevoked: true });
    const access = await TokenAccess.open({ home, logger: createLogger({ level: "silent" }), pollMs: 60_000 });
    try {
      const refused = access.check(unrecorded.token);
      expect(refused.phase === "refused" && refused.error.code).toBe("TOKEN_REVOKED");
    } finally {
      access.close();
    }
  });
});

describe("revocations fail closed, on a real data home", () => {
  test("a registry unreadable for three looks refuses every token (logged twice, not at every look), and recovers", async () => {
    const home = await mkdtemp(path.join(os.tmpdir(), "relevo-tokens-unreadable-"));
    const { tokenKey } = await loadOrCreateSecrets(home);
    const viewer = await issueToken(home, tokenKey, { role: "viewer", ttlMs: HOUR, label: "test" });
    const logged: Array<{ level: number; msg: string }> = [];
    const logger = createLogger({
      level: "warn",
      destination: { write: (line: string) => void logged.push(JSON.parse(line) as { level: number; msg: string }) },
    });
    const access = await TokenAccess.open({ home, logger, pollMs: 60_000 });
    let changes = 0;
    access.onChange(() => (changes += 1));
    try {
      // Running as root, a mode cannot make a file unreadable: a directory at its name can.
      const registry = tokenRegistryFile(home);
      const lines = await readFile(registry, "utf8");
      await rm(registry);
      await mkdir(registry);
      await access.refresh();
      await access.refresh();
      expect(access.check(viewer.token).phase).toBe("accepted"); // a file being replaced: the last one read is kept
      await access.refresh();
      const refused = access.check(viewer.token);
      expect(refused.phase === "refused" && [refused.error.code, refused.error.message]).toEqual([
        "UNAUTHENTICATED",
        expect.stringContaining("cannot read its token key or token registry"),
      ]);
      expect(refused.phase === "refused" && refused.error.message).not.toContain(home);
      expect(access.recheck(viewer.identity).phase).toBe("refused"); // open WebSockets, told through onChange
      expect(changes).toBe(1);
      for (let look = 0; look < 5; look += 1) await access.refresh();
      expect(logged.map((line) => line.level)).toEqual([40, 50]);

      await rmdir(registry);
      await writeFile(registry, lines, { mode: 0o600 });
      await access.refresh();
      expect(access.check(viewer.token).phase).toBe("accepted");
      expect(changes).toBe(2);
    } finally {
      access.close();
    }
  });

  test("the registry gets secrets.json's owner, which a key rotation keeps; a registry owned by another user is refused, left as it was", async () => {
    const home = await mkdtemp(path.join(os.tmpdir(), "relevo-tokens-owner-"));
    const { tokenKey } = await loadOrCreateSecrets(home);
    const service = { uid: 4242, gid: 4343 }; // the user the services of this home run as
    await chown(secretsFile(home), service.uid, service.gid);
    const viewer = await issueToken(home, tokenKey, { role: "viewer", ttlMs: HOUR, label: "test" });
    expect(await stat(tokenRegistryFile(home))).toMatchObject(service);

    await rotateTokenKey(home); // as root: secrets.json keeps its owner, so the service still reads the key
    expect(await stat(secretsFile(home))).toMatchObject(service);

    await chown(tokenRegistryFile(home), 0, 0); // e.g. rewritten by hand as root
    const before = await readFile(tokenRegistryFile(home), "utf8");
    await expect(revokeToken(home, viewer.identity.id)).rejects.toMatchObject({
      code: "PRECONDITION_FAILED",
      message: expect.stringContaining("owned by uid 0 but secrets.json by uid 4242"),
    });
    expect(await readFile(tokenRegistryFile(home), "utf8")).toBe(before);
  });
});

describe("the mutation audit", () => {
  const identity = mintToken(KEY, "operator").identity;
  const operationOf = (text: string): OperationDefinitionNode => parse(text).definitions[0] as OperationDefinitionNode;
  const aliased = (n: number): string =>
    `mutation ${"Flood".repeat(100)} { ${Array.from({ length: n }, (_, i) => `a${i}: refreshTopology { name }`).join(" ")} }`;

  test("a mutation refused before it ran is counted, not recorded", () => {
    const refused = (errorCodes: string[]) => ({ errorCodes, executed: false });
    expect(mutationAudit(operationOf(aliased(3)), identity, refused(["FORBIDDEN"]))).toEqual({ phase: "refused", codes: ["FORBIDDEN"] });
    expect(mutationAudit(operationOf(aliased(3)), identity, refused(Array<string>(3).fill("QUERY_TOO_COMPLEX"))).phase).toBe("refused");
    // Whatever stopped it: nothing ran, so there is nothing to audit but a count (review 13: a viewer's mutation sent
    // by GET is answered 405 BAD_REQUEST before the role gate, and was recorded in full, once per request).
    expect(mutationAudit(operationOf(aliased(3)), identity, refused(["BAD_REQUEST"]))).toEqual({
      phase: "refused",
      codes: ["BAD_REQUEST"],
    });
    expect(mutationAudit(operationOf(aliased(3)), identity, refused(["INTERNAL", "FORBIDDEN"]))).toEqual({
      phase: "refused",
      codes: ["FORBIDDEN", "INTERNAL"],
    });
  });

  test("a mutation that ran is recorded even when every error it has carries a refusal's code", () => {
    // One alias ran, another failed with FORBIDDEN at execution: the one that ran must not pass for a refusal.
    expect(mutationAudit(operationOf(aliased(2)), identity, { errorCodes: ["FORBIDDEN"], executed: true }).phase).toBe("recorded");
  });

  test("a recorded mutation's event has a fixed size, however many aliases the request had", () => {
    const small = mutationAudit(operationOf("mutation Audited { refreshTopology { name } }"), identity, { errorCodes: [], executed: true });
    expect(small).toMatchObject({ phase: "recorded", draft: { data: { operation: "Audited", fields: ["refreshTopology"], calls: 1 } } });
    const audit = mutationAudit(operationOf(aliased(2500)), identity, {
      errorCodes: Array(2500).fill("PRECONDITION_FAILED"),
      executed: true,
    });
    if (audit.phase !== "recorded") throw new Error("expected a recorded mutation");
    expect(audit.draft.data).toEqual({ operation: "Flood".repeat(20), fields: ["refreshTopology"], calls: 2500 });
    expect(audit.draft.message).toContain("(2500 calls)");
    expect(JSON.stringify(audit.draft).length).toBeLessThan(1024);
  });
});
