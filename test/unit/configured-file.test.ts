import { expect } from "@jest/globals";
import { chmod, chown, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileModeProblem, readConfiguredFile } from "../../src/config/configured-file";
import { ErrorCode } from "../../src/errors";

describe("files a variable names (certificates, keys, trust)", () => {
  test("owner and mode: root's or Relevo's own, nobody else may write, nobody else may read a secret", () => {
    const own = { secret: false, ownUid: 0 };
    expect(fileModeProblem({ uid: 0, mode: 0o100644 }, own)).toBeNull();
    expect(fileModeProblem({ uid: 0, mode: 0o100600 }, { ...own, secret: true })).toBeNull();
    expect(fileModeProblem({ uid: 1000, mode: 0o100600 }, { secret: true, ownUid: 1000 })).toBeNull();
    expect(fileModeProblem({ uid: 105, mode: 0o100644 }, own)).toMatch(/owned by uid 105/);
    expect(fileModeProblem({ uid: 0, mode: 0o100664 }, own)).toMatch(/may write it \(mode 664\)/);
    expect(fileModeProblem({ uid: 0, mode: 0o100646 }, own)).toMatch(/may write it/);
    expect(fileModeProblem({ uid: 0, mode: 0o100640 }, { ...own, secret: true })).toMatch(/may read it \(mode 640\): chmod 600/);
    expect(fileModeProblem({ uid: 0, mode: 0o100604 }, { ...own, secret: true })).toMatch(/may read it/);
  });

  test("readConfiguredFile: INVALID_CONFIG naming the variable for a key others may read or a file another user owns; the content otherwise", async () => {
    const directory = await mkdtemp(path.join(os.tmpdir(), "relevo-configured-file-"));
    try {
      const key = path.join(directory, "api.key");
      await writeFile(key, "KEY", { mode: 0o640 });
      await expect(readConfiguredFile(key, "RELEVO_API_TLS_KEY_FILE", { secret: true })).rejects.toMatchObject({
        code: ErrorCode.InvalidConfig,
        message: expect.stringMatching(/RELEVO_API_TLS_KEY_FILE=.*is refused: its group or others may read it/),
      });
      await chmod(key, 0o600);
      expect(await readConfiguredFile(key, "RELEVO_API_TLS_KEY_FILE", { secret: true })).toBe("KEY");
      const ca = path.join(directory, "redis-ca.crt");
      await writeFile(ca, "CA", { mode: 0o644 });
      await chown(ca, 65534, 65534);
      await expect(readConfiguredFile(ca, "RELEVO_REDIS_CA_FILE")).rejects.toMatchObject({
        code: ErrorCode.InvalidConfig,
        message: expect.stringContaining("owned by uid 65534"),
      });
      await expect(readConfiguredFile(path.join(directory, "absent"), "RELEVO_REDIS_CA_FILE")).rejects.toMatchObject({
        code: ErrorCode.InvalidConfig,
        message: expect.stringContaining("cannot be read (ENOENT)"),
      });
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  });
});
