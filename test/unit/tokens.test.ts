import { expect } from "@jest/globals";
import { bannerToken } from "../../src/cli/commands";
import { mintToken, roleAllows, verifyToken } from "../../src/secrets/tokens";

const KEY = "unit-test-key-0123456789abcdefghijklmnop";

describe("API tokens", () => {
  test("a minted token verifies to its role and a short id", () => {
    const token = mintToken(KEY, "viewer");
    expect(verifyToken(KEY, token)).toEqual({ role: "viewer", id: expect.stringMatching(/^[0-9a-f]{12}$/) });
    expect(token).toContain(verifyToken(KEY, token)!.id);
  });

  test("another key, a changed role or a changed signature do not verify", () => {
    const token = mintToken(KEY, "viewer");
    expect(verifyToken(`${KEY}x`, token)).toBeNull();
    expect(verifyToken(KEY, token.replace(".viewer.", ".operator."))).toBeNull();
    expect(verifyToken(KEY, `${token.slice(0, -1)}${token.endsWith("A") ? "B" : "A"}`)).toBeNull();
    expect(verifyToken(KEY, "")).toBeNull();
  });

  test("operator includes viewer, not the other way round", () => {
    expect(roleAllows("operator", "viewer")).toBe(true);
    expect(roleAllows("operator", "operator")).toBe(true);
    expect(roleAllows("viewer", "operator")).toBe(false);
  });

  test("relevo up's banner shows the operator token to a terminal only (anything else may be a log)", () => {
    const token = mintToken(KEY, "operator");
    const written: string[] = [];
    expect(bannerToken(token, { out: (text) => written.push(text), terminal: true })).toBe(token);
    const piped = bannerToken(token, { out: (text) => written.push(text), terminal: false });
    expect(piped).not.toContain(token);
    expect(piped).toContain("relevo token");
  });
});
