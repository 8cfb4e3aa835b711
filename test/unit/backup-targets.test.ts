import { expect } from "@jest/globals";
import { loadConfig } from "../../src/config/config";
import { ErrorCode } from "../../src/errors";
import { ancestorsToCopy, backupTargets, catalogManifest, copiesToRetry, copyStatusOf } from "../../src/backup/backup-targets";
import type { BackupStatus } from "../../src/backup/manifest";
import { backupCreateCommand } from "../../src/cli/backup-commands";
import type { Output } from "../../src/cli/commands";

describe("which repositories a backup goes to (pure)", () => {
  test("all: taken into the lowest-numbered repository, then copied to each other, lowest first", () => {
    expect(backupTargets({ configured: [3, 1, 2], choice: "all" })).toEqual({ taken: 1, copies: [2, 3] });
    expect(backupTargets({ configured: [1], choice: "all" })).toEqual({ taken: 1, copies: [] });
  });

  test("a configured number, or one asked for (which wins over the configuration), writes to that repository alone", () => {
    expect(backupTargets({ configured: [1, 2], choice: 2 })).toEqual({ taken: 2, copies: [] });
    expect(backupTargets({ configured: [1, 2], choice: "all", asked: 2 })).toEqual({ taken: 2, copies: [] });
    expect(backupTargets({ configured: [1, 2], choice: 2, asked: 1 })).toEqual({ taken: 1, copies: [] });
    expect(backupTargets({ configured: [1, 2], choice: 2, asked: null })).toEqual({ taken: 2, copies: [] });
  });

  test("an unknown repository is NOT_FOUND naming the configured ones; a number that is none is BAD_USER_INPUT", () => {
    expect(() => backupTargets({ configured: [1, 2], choice: "all", asked: 3 })).toThrow(
      expect.objectContaining({ code: ErrorCode.NotFound, message: expect.stringContaining("repo1, repo2") }),
    );
    expect(() => backupTargets({ configured: [1, 2], choice: "all", asked: 0 })).toThrow(
      expect.objectContaining({ code: ErrorCode.BadUserInput }),
    );
    expect(() => backupTargets({ configured: [1, 2], choice: "all", asked: 1.5 })).toThrow(
      expect.objectContaining({ code: ErrorCode.BadUserInput }),
    );
  });

  test("RELEVO_BACKUP_REPO: all by default, a configured number, INVALID_CONFIG for one not configured or not a number", () => {
    expect(loadConfig({}).backupRepo).toBe("all");
    const two = { RELEVO_REPO2_TYPE: "dir", RELEVO_REPO2_PATH: "/tmp/relevo-repo2" };
    expect(loadConfig({ ...two, RELEVO_BACKUP_REPO: "2" }).backupRepo).toBe(2);
    expect(() => loadConfig({ RELEVO_BACKUP_REPO: "2" })).toThrow(
      expect.objectContaining({ code: ErrorCode.InvalidConfig, details: expect.objectContaining({ env: "RELEVO_BACKUP_REPO" }) }),
    );
    for (const value of ["some", "0", "-1", "1.5"]) {
      expect(() => loadConfig({ ...two, RELEVO_BACKUP_REPO: value })).toThrow(expect.objectContaining({ code: ErrorCode.InvalidConfig }));
    }
  });
});

describe("a backup's copies (pure)", () => {
  test("a copy's status is what its repository's manifest says; expired or missing is absent", () => {
    expect(copyStatusOf("completed")).toBe("completed");
    expect(copyStatusOf("running")).toBe("copying");
    expect(copyStatusOf("failed")).toBe("failed");
    expect(copyStatusOf("expired")).toBe("absent");
    expect(copyStatusOf(null)).toBe("absent");
  });

  test("a copy needs the chain's backups the target lacks, oldest first, never the backup itself", () => {
    const chain = [{ id: "F1" }, { id: "D2" }, { id: "I3" }];
    expect(ancestorsToCopy(chain, "I3", new Set())).toEqual(["F1", "D2"]);
    expect(ancestorsToCopy(chain, "I3", new Set(["F1"]))).toEqual(["D2"]);
    expect(ancestorsToCopy(chain, "I3", new Set(["F1", "D2"]))).toEqual([]);
    expect(ancestorsToCopy([{ id: "F1" }], "F1", new Set())).toEqual([]);
  });

  test("copies meant for the target that failed, were cut off or never began are retried; completed, expired and others not", () => {
    const toTwo = (id: string) => ({ id, copyTo: [2, 3] });
    const source = [toTwo("A1"), toTwo("B2"), toTwo("C3"), toTwo("D4"), toTwo("E5"), { id: "F6" }, { id: "G7", copyTo: [3] }];
    const target = new Map<string, BackupStatus>([
      ["A1", "completed"],
      ["B2", "failed"],
      ["C3", "running"],
      ["D4", "expired"],
    ]);
    // E5: absent (the target was down before the copy wrote anything); F6: written to one repository alone; G7: not for 2.
    expect(copiesToRetry(source, 2, target)).toEqual(["B2", "C3", "E5"]);
  });

  test("the catalog shows the lowest-numbered completed copy, else the lowest-numbered manifest", () => {
    const at = (status: BackupStatus, where: number) => ({ status, where });
    expect(catalogManifest([at("failed", 1), at("completed", 2)])).toEqual(at("completed", 2));
    expect(catalogManifest([at("completed", 1), at("completed", 2)])).toEqual(at("completed", 1));
    expect(catalogManifest([null, at("running", 2)])).toEqual(at("running", 2));
    expect(catalogManifest([at("expired", 1), at("failed", 2)])).toEqual(at("expired", 1));
    expect(catalogManifest([null, null])).toBeNull();
  });
});

describe("relevo backup create --repo", () => {
  test("a --repo that is not a repository's number is refused before the API is asked", async () => {
    const output = { out: () => undefined, err: () => undefined } as unknown as Output;
    for (const repo of ["0", "two", "-1", "1.5", ""]) {
      await expect(backupCreateCommand(loadConfig({}), { type: "full", wait: false, repo }, output)).rejects.toMatchObject({
        code: ErrorCode.BadUserInput,
        message: expect.stringContaining("--repo"),
      });
    }
  });
});
